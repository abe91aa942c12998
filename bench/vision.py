"""Vision: detection through the router vs the detector in-process vs bare onnxruntime.

The same sample photos (scikit-image's astronaut, chelsea, coffee, motorcycle_left and
matplotlib's grace_hopper) go (1) through the real stack, HTTP -> router -> NATS -> vision
worker, one client and then 4 concurrent ones; (2) through edge_vision.Detector in this
process (decode, resize, infer, post-process); (3) straight into onnxruntime's session.run
on inputs resized to [1, 300, 300, 3] uint8 beforehand. All use the shipped SSD model with
one intra-op thread, as the worker does. Prints images/s, p50/p99 latency, the answers' own
stage timings, and the ratios: router / detector (the gateway's cost) and detector / bare
inference (our pre- and post-processing).

    ./dev bench-vision [--rounds 20] [--clients 4] [--max-seconds 60]
"""

import argparse
import asyncio
import base64
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import matplotlib
import msgspec
import numpy as np
import onnxruntime
import skimage
from edge_common.protocol.vision import Timings
from edge_common.stack import LocalStack, free_port, start_service
from edge_vision import Detector, default_model
from edge_vision.backends import create_backend
from PIL import Image

PHOTOS = Path(skimage.__file__).parent / "data"
IMAGES = [
    PHOTOS / "astronaut.png",
    PHOTOS / "chelsea.png",
    PHOTOS / "coffee.png",
    PHOTOS / "motorcycle_left.png",
    Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
]


class Answer(msgspec.Struct):
    """The part of a /v1/vision/detect answer we read."""

    timings: Timings


class Run(msgspec.Struct):
    """One path's measurements: per-request seconds, the wall time of the whole run, and
    the stage timings the detector reported (none for bare inference)."""

    name: str
    latencies: list[float]
    wall: float
    timings: list[Timings]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def schedule(count: int, rounds: int) -> list[int]:
    """Image indices, every image once per round, in order."""
    return [i for _ in range(rounds) for i in range(count)]


def timed(name: str, order: list[int], one: Callable[[int], Timings | None], limit: float) -> Run:
    """`one(i)` for each index of `order` (after one warm-up pass over the images),
    stopping early when `limit` seconds are spent."""
    for i in sorted(set(order)):
        one(i)
    latencies: list[float] = []
    timings: list[Timings] = []
    started = time.perf_counter()
    for i in order:
        t0 = time.perf_counter()
        stages = one(i)
        latencies.append(time.perf_counter() - t0)
        if stages:
            timings.append(stages)
        if time.perf_counter() - started > limit:
            break
    return Run(name, latencies, time.perf_counter() - started, timings)


async def concurrent(
    url: str, bodies: list[bytes], order: list[int], clients: int, limit: float
) -> Run:
    """`clients` workers taking the next image from a shared queue of `order`."""
    queue = list(reversed(order))
    latencies: list[float] = []
    timings: list[Timings] = []
    headers = {"content-type": "application/json"}

    async def client(http: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            body = bodies[queue.pop()]
            t0 = time.perf_counter()
            response = await http.post("/v1/vision/detect", content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()
            timings.append(msgspec.json.decode(response.content, type=Answer).timings)

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for body in bodies:  # warm-up, as for the sequential runs
            (await http.post("/v1/vision/detect", content=body, headers=headers)).raise_for_status()
        started = time.perf_counter()
        deadline = started + limit  # from here: the warm-up is not the run's time
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return Run(f"router, {clients} clients", latencies, time.perf_counter() - started, timings)


def through_router(
    url: str, images: list[bytes], order: list[int], clients: int, max_seconds: float
) -> list[Run]:
    media = ["image/jpeg" if p.suffix == ".jpg" else "image/png" for p in IMAGES]
    bodies = [
        msgspec.json.encode({"image": f"data:{m};base64," + base64.b64encode(data).decode()})
        for m, data in zip(media, images, strict=True)
    ]
    with httpx.Client(base_url=url, timeout=60) as http:

        def one(i: int) -> Timings:
            response = http.post(
                "/v1/vision/detect", content=bodies[i], headers={"content-type": "application/json"}
            )
            response.raise_for_status()
            return msgspec.json.decode(response.content, type=Answer).timings

        sequential = timed("router, 1 client", order, one, max_seconds)
    crowd = asyncio.run(concurrent(url, bodies, order, clients, max_seconds))
    return [sequential, crowd]


def in_process(images: list[bytes], order: list[int], limit: float) -> list[Run]:
    spec = default_model()
    detector = Detector(spec, create_backend(spec))
    try:
        run = timed(
            "Detector in-process", order, lambda i: detector.detect(images[i]).timings, limit
        )
    finally:
        detector.close()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = spec.threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    _, height, width, _ = model_input.shape
    tensors = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((width, height)))[None]
        for data in images
    ]

    def bare(i: int) -> None:
        session.run(None, {model_input.name: tensors[i]})

    return [run, timed("bare session.run", order, bare, limit)]


def row(run: Run) -> str:
    ms = [s * 1000 for s in run.latencies]
    stages = (
        "".join(
            f"{statistics.median(getattr(t, f) for t in run.timings):>9.2f}"
            for f in ("preprocess_ms", "inference_ms", "postprocess_ms")
        )
        if run.timings
        else f"{'-':>9}" * 3
    )
    rate = len(ms) / run.wall
    return (
        f"{run.name:<22}{len(ms):>7}{rate:>10.1f}{statistics.median(ms):>9.2f}"
        f"{pct(ms, 99):>9.2f}{stages}"
    )


def run(rounds: int = 20, clients: int = 4, max_seconds: float = 60) -> list[Run]:
    """The four paths: router with 1 client, with `clients`, Detector, bare session.run."""
    images = [p.read_bytes() for p in IMAGES]
    order = schedule(len(images), rounds)
    with LocalStack() as stack:
        stack.add(start_service("vision", free_port(), stack.env, output=stack.log))
        url, _ = stack.router()
        runs = through_router(url, images, order, clients, max_seconds)
    return runs + in_process(images, order, max_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="passes over the 5 images")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=60, help="cap on each path's run")
    args = parser.parse_args()
    runs = run(args.rounds, args.clients, args.max_seconds)

    print(f"\n{len(IMAGES)} sample photos x {args.rounds} rounds, SSD-MobileNet-v2 int8 300x300,")
    print("onnxruntime CPU, 1 intra-op thread; stage columns: medians of the answers' timings\n")
    print(
        f"{'path':<22}{'images':>7}{'img/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'pre ms':>9}{'infer ms':>9}{'post ms':>9}"
    )
    for path in runs:
        print(row(path))

    router, crowd, detector, bare = runs
    p50 = {path.name: statistics.median(path.latencies) for path in runs}
    rate = {path.name: len(path.latencies) / path.wall for path in runs}
    extra_ms = (p50[router.name] - p50[detector.name]) * 1000
    print(
        f"\nrouter / in-process detector: p50 x{p50[router.name] / p50[detector.name]:.2f}"
        f" (+{extra_ms:.2f} ms per image), img/s x{rate[router.name] / rate[detector.name]:.2f}"
        f" (1 client), x{rate[crowd.name] / rate[detector.name]:.2f} ({args.clients} clients)"
    )
    share = statistics.median(
        (t.preprocess_ms + t.postprocess_ms) / (t.preprocess_ms + t.inference_ms + t.postprocess_ms)
        for t in detector.timings
    )
    print(
        f"in-process detector / bare session.run: p50 x{p50[detector.name] / p50[bare.name]:.2f},"
        f" img/s x{rate[detector.name] / rate[bare.name]:.2f};"
        f" pre+post = {share:.0%} of the detector's own timings (median)"
    )


if __name__ == "__main__":
    main()
