"""Cloud-path cost: our router vs the LiteLLM proxy, in front of the same fake OpenAI upstream.

Three targets on loopback take the same requests from the same httpx client code: the fake
upstream (tests/fake_openai.py, in its own process) called directly, our router (cloud-only:
one upstream serving the model, API keys off, started as the tests start it: nats-server
plus `python -m edge_router`) and the LiteLLM proxy (one `openai/<model>` entry pointing at
the fake). At 1, 8 and 32 concurrent clients, non-stream and stream, each gets the same
number of requests, the targets taking turns. Added latency is a gateway's percentile minus the
direct one; for streams both time to first content (TTFT) and to the end. Requests/s at
saturation is the best rate any point reached; RSS is each gateway's process tree after the
run. Ratios are router/LiteLLM (below 1: the router costs less).

    ./dev bench-gateway [--requests 300] [--stream-requests 200] [--clients 1,8,32]
                        [--router-python-path DIR[:DIR...]]

--router-python-path (or EDGE_BENCH_ROUTER_PYTHONPATH) is prepended to the router's
PYTHONPATH, e.g. OTHER/services/router/src:OTHER/services/common/src to measure another
checkout's router with this venv.
"""

import argparse
import asyncio
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import msgspec
from edge_common.stack import (
    Proc,
    die_with_parent,
    free_port,
    http_ready,
    nats_passwords,
    spawn,
    start_nats,
    start_service,
)
from measure import percentile, ratio, rss_mb

MODEL = "gpt-bench"
SYSTEMS = ("direct", "router", "litellm")
GATEWAYS = ("router", "litellm")
ANSWER = "Hello from the cloud."  # what fake_openai answers, to check every reply
TESTS = Path(__file__).resolve().parents[1] / "tests"
SLICES = 10
"""Each point's requests go in up to this many turns per target (20 requests at least a
turn: each warms up anew), the targets taking turns: LiteLLM's proxy wakes for work of its
own now and then, and with three turns one of them could slow a whole third of another
target's requests (the direct p50 at 1 client read 1.19 ms once, 0.74 ms otherwise)."""


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One target at one concurrency and mode: every request's timings, in ms."""

    system: str
    clients: int
    stream: bool
    total_ms: list[float]
    """Request sent to the last byte of the answer."""
    ttft_ms: list[float]
    """Request sent to the first non-empty content delta (streams only, else empty)."""
    seconds: float
    errors: int

    @property
    def rps(self) -> float:
        return len(self.total_ms) / self.seconds if self.seconds else math.nan


class GatewayResult(msgspec.Struct, frozen=True, kw_only=True):
    points: list[Point]
    rss_mb: dict[str, float]
    """Resident memory of each gateway's process tree after the run."""
    litellm_version: str
    requests: int
    stream_requests: int

    def point(self, system: str, clients: int, stream: bool) -> Point:
        return next(
            p for p in self.points if (p.system, p.clients, p.stream) == (system, clients, stream)
        )

    def added_ms(
        self, system: str, clients: int, stream: bool, q: float, ttft: bool = False
    ) -> float:
        """The q-th percentile of `system` minus the direct one (TTFT or total)."""

        def value(p: Point) -> float:
            return percentile(p.ttft_ms if ttft else p.total_ms, q)

        return value(self.point(system, clients, stream)) - value(
            self.point("direct", clients, stream)
        )

    def saturation_rps(self, system: str) -> float:
        return max(p.rps for p in self.points if p.system == system and not p.stream)

    @property
    def clients(self) -> list[int]:
        return sorted({p.clients for p in self.points})


def _serve_fake(conn: Connection) -> None:
    """In a forked child: the fake upstream on its own event loop and CPU time; it ends
    with its parent however that ends (daemon children are only ended on a clean exit)."""
    die_with_parent()  # as spawn() gives every service
    sys.path.insert(0, str(TESTS))  # the fake is a test double; it lives with the tests
    from fake_openai import FakeOpenAI

    async def serve() -> None:
        # LiteLLM asks the upstream for GET /v1/models when it starts; the fake serves chat
        # only and fails that request: one line instead of a traceback
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: print(f"fake upstream: {context.get('exception')!r}")
        )
        fake = FakeOpenAI()
        conn.send(await fake.start())
        await asyncio.Event().wait()

    asyncio.run(serve())


@dataclass
class Target:
    url: str
    pid: int | None


@contextmanager
def fake_upstream() -> Iterator[Target]:
    ctx = multiprocessing.get_context("fork")  # no event loop or thread runs yet in the parent
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_fake, args=(child,), daemon=True, name="fake_openai")
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake upstream did not start within 30 s")
        yield Target(parent.recv(), proc.pid)
    finally:
        proc.terminate()
        proc.join()


def start_router(
    upstream: str, workdir: Path, log: object, python_path: str = ""
) -> tuple[Target, list[Proc]]:
    """nats-server and a cloud-only router (no llm worker) as the tests start them; the
    processes in start order."""
    nats_port, passwords = free_port(), nats_passwords({})
    nats = start_nats(nats_port, workdir / "nats", passwords, log)  # type: ignore[arg-type]
    upstreams = [{"name": "fake", "base_url": upstream, "models": [MODEL]}]
    env = {
        "EDGE_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        **passwords,
        "EDGE_ROUTER_UPSTREAMS": msgspec.json.encode(upstreams).decode(),
    }
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path, os.getenv("PYTHONPATH")]))
    port = free_port()
    try:
        router = start_service("router", port, env, output=log)  # type: ignore[arg-type]
    except BaseException:
        nats.stop()
        raise
    return Target(f"http://127.0.0.1:{port}/v1", router.popen.pid), [nats, router]


def start_litellm(upstream: str, workdir: Path, log: object) -> tuple[Target, Proc]:
    """LiteLLM's proxy with one model entry; it refuses to start without a master key
    unless told this is local development (our router runs with keys off too)."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: unused\n"
    )
    port = free_port()
    argv = [str(Path(sys.executable).parent / "litellm"), "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_TELEMETRY": "False",
    }
    proc = spawn("litellm", argv, env=env, output=log)  # type: ignore[arg-type]
    proc.wait_ready(http_ready(f"http://127.0.0.1:{port}/health/liveliness"), 240)
    return Target(f"http://127.0.0.1:{port}/v1", proc.popen.pid), proc


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)


_decode = msgspec.json.Decoder(_Chunk).decode


async def _request(http: httpx.AsyncClient, stream: bool) -> tuple[float, float]:
    """One chat completion: (ms to the end, ms to first content); raises on a wrong answer."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    start = time.perf_counter()
    if not stream:
        response = await http.post("/chat/completions", json=body)
        total = (time.perf_counter() - start) * 1000
        choices = _decode(response.content).choices if response.status_code == 200 else []
        if not choices or choices[0].message is None or choices[0].message.content != ANSWER:
            raise ValueError(f"unexpected answer {response.status_code}")
        return total, total
    first, text = 0.0, []
    async with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in _decode(line[6:]).choices:
                if choice.delta and choice.delta.content:
                    first = first or time.perf_counter()
                    text.append(choice.delta.content)
    total = (time.perf_counter() - start) * 1000
    if response.status_code != 200 or "".join(text) != ANSWER:
        raise ValueError(f"unexpected stream {response.status_code}")
    return total, (first - start) * 1000


async def _load(system: str, url: str, clients: int, stream: bool, requests: int) -> Point:
    """`requests` requests to `system` from `clients` concurrent workers, after a warm-up."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    totals: list[float] = []
    ttfts: list[float] = []
    errors = 0
    left = requests

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            try:
                total, ttft = await _request(http, stream)
            except (httpx.HTTPError, ValueError, msgspec.DecodeError):
                errors += 1
                continue
            totals.append(total)
            if stream:
                ttfts.append(ttft)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(_request(http, stream) for _ in range(clients)))  # warm up
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return Point(
        system=system,
        clients=clients,
        stream=stream,
        total_ms=totals,
        ttft_ms=ttfts,
        seconds=seconds,
        errors=errors,
    )


def _merged(parts: list[Point]) -> Point:
    """One point from its slices: all timings, the time spent loading, the errors."""
    return msgspec.structs.replace(
        parts[0],
        total_ms=[v for p in parts for v in p.total_ms],
        ttft_ms=[v for p in parts for v in p.ttft_ms],
        seconds=sum(p.seconds for p in parts),
        errors=sum(p.errors for p in parts),
    )


def run(
    *,
    requests: int = 300,
    stream_requests: int = 200,
    clients: tuple[int, ...] = (1, 8, 32),
    router_python_path: str = "",
) -> GatewayResult:
    """Start the three targets, load each at every point, stop them; the raw timings."""
    points: list[Point] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = stack.enter_context((workdir / "gateway.log").open("wb"))
        fake = stack.enter_context(fake_upstream())
        router, procs = start_router(fake.url, workdir, log, router_python_path)
        for proc in procs:
            stack.callback(proc.stop)
        litellm, proc = start_litellm(fake.url, workdir, log)
        stack.callback(proc.stop)
        targets = {"direct": fake, "router": router, "litellm": litellm}

        async def measure_all() -> None:
            for stream in (False, True):
                for n in clients:
                    count = stream_requests if stream else requests
                    parts: dict[str, list[Point]] = {system: [] for system in targets}
                    turns = max(1, min(SLICES, count // 20))
                    for i in range(turns):  # in turns: a burst of load elsewhere hits all
                        share = count // turns + (i < count % turns)
                        for system, target in targets.items():
                            parts[system].append(await _load(system, target.url, n, stream, share))
                    points.extend(_merged(p) for p in parts.values())

        asyncio.run(measure_all())
        rss = {name: rss_mb(targets[name].pid or 0) for name in GATEWAYS}
    return GatewayResult(
        points=points,
        rss_mb=rss,
        litellm_version=version("litellm"),
        requests=requests,
        stream_requests=stream_requests,
    )


def rows(result: GatewayResult) -> list[list[str]]:
    """The comparison table: per point, each gateway's added p50/p99 and the ratio of p50s."""
    out = []
    for stream in (False, True):
        metrics = [("TTFT", True), ("total", False)] if stream else [("total", False)]
        for n in result.clients:
            for label, ttft in metrics:
                added = {
                    (g, q): result.added_ms(g, n, stream, q, ttft)
                    for g in GATEWAYS
                    for q in (50, 99)
                }
                direct = result.point("direct", n, stream)
                out.append(
                    [
                        f"{'stream ' + label if stream else 'non-stream'}",
                        str(n),
                        f"{percentile(direct.ttft_ms if ttft else direct.total_ms, 50):.2f}",
                        *(f"{added[g, q]:+.2f}" for g in GATEWAYS for q in (50, 99)),
                        ratio(added["router", 50], added["litellm", 50]),
                        ratio(added["router", 99], added["litellm", 99]),
                    ]
                )
    return out


HEADER = [
    "mode",
    "clients",
    "direct p50 ms",
    "router +p50 ms",
    "router +p99 ms",
    "LiteLLM +p50 ms",
    "LiteLLM +p99 ms",
    "ratio p50",
    "ratio p99",
]


def summary_rows(result: GatewayResult) -> list[list[str]]:
    """Per target: requests/s at saturation, RSS after the run, errors over all points."""
    out = []
    for system in SYSTEMS:
        errors = sum(p.errors for p in result.points if p.system == system)
        rss = f"{result.rss_mb[system]:.0f}" if system in result.rss_mb else "-"
        out.append([system, f"{result.saturation_rps(system):.0f}", rss, str(errors)])
    return out


SUMMARY_HEADER = ["target", "requests/s at saturation", "RSS MiB after", "errors"]


def print_table(header: list[str], body: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    for row in [header, *body]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per non-stream point")
    parser.add_argument("--stream-requests", type=int, default=200, help="per stream point")
    parser.add_argument("--clients", default="1,8,32", help="concurrencies, comma-separated")
    parser.add_argument(
        "--router-python-path",
        default=os.getenv("EDGE_BENCH_ROUTER_PYTHONPATH", ""),
        help="prepended to the router's PYTHONPATH (another checkout's src dirs)",
    )
    args = parser.parse_args()
    result = run(
        requests=args.requests,
        stream_requests=args.stream_requests,
        clients=tuple(int(c) for c in args.clients.split(",")),
        router_python_path=args.router_python_path,
    )
    print("\nadded latency over the fake upstream called directly", end="")
    print(f" (LiteLLM {result.litellm_version}); ratio = router added / LiteLLM added\n")
    print_table(HEADER, rows(result))
    print()
    print_table(SUMMARY_HEADER, summary_rows(result))
    rps = ratio(result.saturation_rps("router"), result.saturation_rps("litellm"))
    rss = ratio(result.rss_mb["router"], result.rss_mb["litellm"])
    print(f"\nratio router/LiteLLM: requests/s {rps}, RSS {rss}")


if __name__ == "__main__":
    main()
