"""The benchmark report's sections: each runs one bench's entry point and renders Markdown.

A section takes the run's sizes and the charts directory and returns its Markdown body:
what was compared, tables with ratios, chart links, and the command that runs it alone.
Each imports its bench inside: a section's process loads only what it runs.
"""

import asyncio
import math
import re
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import charts
import msgspec
from measure import percentile, ratio

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
"""A structlog console line (rag.py's library code logs to stdout): not part of its tables."""


class Sizes(msgspec.Struct, frozen=True, kw_only=True):
    """How much each section measures (the full report, or the test's tiny one)."""

    gateway_requests: int
    gateway_stream_requests: int
    gateway_clients: tuple[int, ...] = (1, 8, 32)
    overhead_rounds: int
    overhead_max_tokens: int
    overload_clients: int
    overload_depth: int = 16
    overload_max_tokens: int
    cancel_rounds: int
    cancel_kills: int
    faults_rounds: int
    vision_rounds: int
    vision_clients: int = 4
    vision_max_seconds: float
    rag_args: tuple[str, ...]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def image(path: Path, alt: str) -> str:
    return f"![{alt}]({path.parent.name}/{path.name})"


def command(script: str, *args: object) -> str:
    return "Alone: `" + " ".join(["python", f"bench/{script}", *map(str, args)]) + "`"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def gateway_section(sizes: Sizes, out: Path) -> str:
    import gateway

    result = gateway.run(
        requests=sizes.gateway_requests,
        stream_requests=sizes.gateway_stream_requests,
        clients=sizes.gateway_clients,
    )

    def panels(stream: bool, ttft: bool) -> dict[str, dict[str, list[float]]]:
        return {
            f"{n} client{'s' * (n > 1)}": {
                s: (p.ttft_ms if ttft else p.total_ms)
                for s in gateway.SYSTEMS
                for p in [result.point(s, n, stream)]
            }
            for n in result.clients
        }

    boxes = charts.boxes(
        out / "gateway_latency.png",
        "Cloud path, non-stream: latency per request (ms, log)",
        panels(False, False),
        "ms",
        log=True,
    )
    ttft = charts.boxes(
        out / "gateway_ttft.png",
        "Cloud path, stream: time to first content (ms, log)",
        panels(True, True),
        "ms",
        log=True,
    )
    cdf = charts.cdfs(
        out / "gateway_cdf.png", "Cloud path, non-stream: CDF", panels(False, False), "ms"
    )
    absolute = [
        [
            "stream" if p.stream else "non-stream",
            str(p.clients),
            p.system,
            fmt(percentile(p.total_ms, 50), 2),
            fmt(percentile(p.total_ms, 99), 2),
            fmt(percentile(p.ttft_ms, 50), 2) if p.stream else "-",
            fmt(p.rps, 0),
            str(p.errors),
        ]
        for p in result.points
    ]
    rps = ratio(result.saturation_rps("router"), result.saturation_rps("litellm"))
    rss = ratio(result.rss_mb["router"], result.rss_mb["litellm"])
    return "\n\n".join(
        [
            f"Our router (cloud-only: one upstream serving `{gateway.MODEL}`, API keys off,"
            " nats-server beside it, no llm worker) and the LiteLLM proxy"
            f" {result.litellm_version} (one `openai/{gateway.MODEL}` entry) in front of the"
            " same fake OpenAI upstream (tests/fake_openai.py, its own process), next to that"
            " upstream called directly, from the same httpx client code. Per point"
            f" {result.requests} non-stream or {result.stream_requests} stream requests, after"
            " a warm-up. Added latency = the gateway's percentile minus the direct one;"
            " ratio = router added / LiteLLM added (below 1: the router adds less).",
            "LiteLLM needed: `LITELLM_LOCAL_MODEL_COST_MAP=True` (else it fetches its cost map"
            " from GitHub at start), `LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true`"
            " (it refuses to start without a master key; our router runs with keys off too),"
            " `--host 127.0.0.1` (it listens on 0.0.0.0 by default). Both log each request at"
            " their default level.",
            table(gateway.HEADER, gateway.rows(result)),
            table(gateway.SUMMARY_HEADER, gateway.summary_rows(result)),
            f"Router/LiteLLM: requests/s at saturation {rps}, RSS after the run {rss}.",
            table(
                ["mode", "clients", "target", "p50 ms", "p99 ms", "TTFT p50 ms", "req/s", "errors"],
                absolute,
            ),
            image(boxes, "non-stream latency per target"),
            image(ttft, "stream TTFT per target"),
            image(cdf, "non-stream latency CDF"),
            command(
                "gateway.py",
                f"--requests {result.requests} --stream-requests {result.stream_requests}",
                "--clients " + ",".join(map(str, result.clients)),
            ),
        ]
    )


def overhead_section(sizes: Sizes, out: Path) -> str:
    import overhead

    result = overhead.run(sizes.overhead_rounds, sizes.overhead_max_tokens)
    rows = [
        [
            name,
            fmt(result.ttft_ms(name)),
            fmt(result.rate(name)),
            str(sum(r[2] for r in result.results[name])),
        ]
        for name in result.results
    ]
    ours, base = overhead.OURS, overhead.BASELINE
    chart = charts.boxes(
        out / "overhead.png",
        "Local path: router vs llama.cpp's own server",
        {
            "TTFT ms": {k: [r[0] * 1000 for r in v] for k, v in result.results.items()},
            "decode tokens/s": {k: [r[1] for r in v] for k, v in result.results.items()},
        },
        "",
    )
    return "\n\n".join(
        [
            "The bundled SmolLM2-135M GGUF behind llama-cpp-python's own OpenAI server and"
            " behind our router (HTTP -> NATS -> llm worker), greedy streaming requests in"
            f" alternation, {len(overhead.PROMPTS) * result.rounds} per target,"
            f" max_tokens={result.max_tokens}, {result.threads} threads.",
            table(["target", "TTFT p50 ms", "decode tok/s p50", "tokens"], rows),
            f"Router/llama.cpp: TTFT {ratio(result.ttft_ms(ours), result.ttft_ms(base))},"
            f" decode {ratio(result.rate(ours), result.rate(base))}.",
            image(chart, "local path TTFT and decode rate"),
            command("overhead.py", f"--rounds {result.rounds} --max-tokens {result.max_tokens}"),
        ]
    )


def overload_section(sizes: Sizes, out: Path) -> str:
    import overload

    bursts = overload.run(sizes.overload_clients, sizes.overload_depth, sizes.overload_max_tokens)
    rows = [
        [
            str(b.depth),
            str(len(b.ttft_s)),
            str(len(b.refused_ms)),
            fmt(percentile(b.refused_ms, 50)),
            fmt(percentile(b.ttft_s, 50), 2),
            fmt(percentile(b.ttft_s, 99), 2),
            f"{b.rss_before_mb:.0f} / {b.rss_after_mb:.0f}",
        ]
        for b in bursts
    ]
    bounded, unbounded = bursts
    chart = charts.boxes(
        out / "overload.png",
        f"{sizes.overload_clients} streaming clients: TTFT of those served (s)",
        {"TTFT s": {f"depth {b.depth}": b.ttft_s for b in bursts}},
        "s",
    )
    p99 = ratio(percentile(bounded.ttft_s, 99), percentile(unbounded.ttft_s, 99))
    return "\n\n".join(
        [
            f"{sizes.overload_clients} concurrent streaming clients against one llm worker,"
            f" max_tokens={sizes.overload_max_tokens}: a router with a bounded queue"
            f" (depth {bounded.depth}: the rest get 429 at once) vs an effectively unbounded"
            " one (depth 1000).",
            table(
                [
                    "queue depth",
                    "served",
                    "429",
                    "429 p50 ms",
                    "TTFT p50 s",
                    "TTFT p99 s",
                    "RSS MB before / after",
                ],
                rows,
            ),
            f"TTFT p99 bounded/unbounded: {p99}.",
            image(chart, "overload TTFT"),
            command(
                "overload.py",
                f"--clients {sizes.overload_clients} --depth {sizes.overload_depth}",
                f"--max-tokens {sizes.overload_max_tokens}",
            ),
        ]
    )


def cancel_section(sizes: Sizes, out: Path) -> str:
    import cancel

    hangups, kills = cancel.run(sizes.cancel_rounds, sizes.cancel_kills)
    ms = {
        "client disconnect": [v * 1000 for v in hangups],
        "holder killed (TTL)": [v * 1000 for v in kills],
    }
    rows = [[k, fmt(statistics.median(v)), fmt(max(v))] for k, v in ms.items()]
    chart = charts.boxes(
        out / "cancel.png", "NPU lease free again after (ms, log)", {"ms": ms}, "ms", log=True
    )
    versus = ratio(statistics.median(hangups), statistics.median(kills))
    return "\n\n".join(
        [
            f"Through the real stack: a streaming client hangs up at its first token"
            f" ({len(hangups)} times) vs a lease holder killed with -9 ({len(kills)} times);"
            " an observer on the lease bucket times until the NPU slot is free.",
            table(["cause", "p50 ms", "max ms"], rows),
            f"Disconnect/crash: {versus}.",
            image(chart, "lease release times"),
            command("cancel.py", f"--rounds {sizes.cancel_rounds} --kills {sizes.cancel_kills}"),
        ]
    )


def faults_section(sizes: Sizes, out: Path) -> str:
    import faults

    workers, nats = asyncio.run(faults.measure(sizes.faults_rounds))
    what = {"to_error": "client error event", "to_ready": "worker ready", "to_200": "next 200"}
    rows = []
    for name, rounds, keys in (
        ("llm worker", workers, ("to_error", "to_ready", "to_200")),
        ("nats-server", nats, ("to_error", "to_200")),
    ):
        for k in keys:
            values = [r[k] for r in rounds]
            rows.append(
                [
                    name,
                    what[k],
                    faults.BEFORE[k],
                    fmt(statistics.median(values), 2),
                    fmt(max(values), 2),
                ]
            )
        endings = Counter(r["ending"] for r in rounds)
        ended = ", ".join(f"{k}: {v}" for k, v in endings.items())
        rows.append([name, "stream ended with", "", ended, ""])
    restarted = sum(r["restarted"] for r in nats)
    rows.append(["nats-server", "restarted by supervisor", "", f"{restarted} of {len(nats)}", ""])
    return "\n\n".join(
        [
            f"Through `edge-ai up` (default configuration), {sizes.faults_rounds} round(s) each:"
            " kill -9 of the llm worker or nats-server while a local stream is reading tokens."
            " Before: the stack before supervision, as recorded in issue 10 (it cannot be run"
            " side by side any more).",
            table(
                ["fault", "seconds from kill -9 to", "before (recorded)", "now p50 s", "now max s"],
                rows,
            ),
            command("faults.py", f"--rounds {sizes.faults_rounds}"),
        ]
    )


def vision_section(sizes: Sizes, out: Path) -> str:
    import vision

    runs = vision.run(sizes.vision_rounds, sizes.vision_clients, sizes.vision_max_seconds)

    def stage(run: vision.Run, field: str) -> str:
        values = [getattr(t, field) for t in run.timings]
        return fmt(statistics.median(values), 2) if values else "-"

    rows = [
        [
            r.name,
            str(len(r.latencies)),
            fmt(len(r.latencies) / r.wall),
            fmt(percentile(r.latencies, 50) * 1000, 2),
            fmt(percentile(r.latencies, 99) * 1000, 2),
            *(stage(r, f) for f in ("preprocess_ms", "inference_ms", "postprocess_ms")),
        ]
        for r in runs
    ]
    router, crowd, detector, bare = runs
    p50 = {r.name: statistics.median(r.latencies) for r in runs}
    rate = {r.name: len(r.latencies) / r.wall for r in runs}
    chart = charts.boxes(
        out / "vision.png",
        "Detection latency per path (ms)",
        {"ms": {r.name: [v * 1000 for v in r.latencies] for r in runs}},
        "ms",
    )
    return "\n\n".join(
        [
            "Five sample photos through the router (HTTP -> NATS -> vision worker), through"
            " edge_vision.Detector in-process, and into onnxruntime's session.run on"
            " pre-resized inputs; SSD-MobileNet-v2 int8, 1 intra-op thread.",
            table(
                ["path", "images", "img/s", "p50 ms", "p99 ms", "pre ms", "infer ms", "post ms"],
                rows,
            ),
            f"Router/in-process detector: p50 {ratio(p50[router.name], p50[detector.name])},"
            f" img/s {ratio(rate[router.name], rate[detector.name])} (1 client),"
            f" {ratio(rate[crowd.name], rate[detector.name])} ({sizes.vision_clients} clients)."
            f" Detector/bare session.run: p50 {ratio(p50[detector.name], p50[bare.name])}.",
            image(chart, "vision latency per path"),
            command(
                "vision.py",
                f"--rounds {sizes.vision_rounds} --clients {sizes.vision_clients}",
                f"--max-seconds {sizes.vision_max_seconds:g}",
            ),
        ]
    )


def rag_section(sizes: Sizes, out: Path) -> str:
    """rag.py prints its own tables (its internals belong to the RAG work): kept verbatim."""
    script = Path(__file__).with_name("rag.py")
    done = subprocess.run(
        [sys.executable, str(script), *sizes.rag_args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"rag.py exited {done.returncode}: {done.stderr[-500:]}")
    printed = "\n".join(line for line in done.stdout.splitlines() if not LOG_LINE.match(line))
    return "\n\n".join(
        [
            "Embedder variants (as shipped vs rewritten graph), ingest through edge_rag.Library"
            " (old vs new defaults), and search: qdrant-edge HNSW vs an exact faiss index"
            " (recall@10, p50/p99), as bench/rag.py prints them.",
            f"```text\n{printed.strip()}\n```",
            command("rag.py", *sizes.rag_args),
        ]
    )


SECTIONS: dict[str, tuple[str, Callable[[Sizes, Path], str]]] = {
    "gateway": ("Cloud path: router vs LiteLLM proxy", gateway_section),
    "overhead": ("Local path: router vs llama.cpp's own server", overhead_section),
    "overload": ("Overload: bounded vs unbounded queue", overload_section),
    "cancel": ("Cancel: NPU lease after a disconnect vs a crash", cancel_section),
    "faults": ("Faults: kill -9 through edge-ai up", faults_section),
    "vision": ("Vision: router vs in-process detector vs bare onnxruntime", vision_section),
    "rag": ("RAG: embedder, ingest, search vs exact faiss", rag_section),
}
"""Key -> (title, section), in report order; the gateway first."""
