"""The benchmark report's reduced form (bench/report.py --tiny) as a test, so its code cannot
rot: every comparison runs for real with a few requests, and the Markdown and charts it
writes are checked for numbers and plotted data."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPORT = Path(__file__).resolve().parents[1] / "bench" / "report.py"
SECTIONS = {
    "Cloud path: router vs LiteLLM proxy": "non-stream",
    "Local path: router vs llama.cpp's own server": "edge router",
    "Overload: bounded vs unbounded queue": "1000",
    "Cancel: NPU lease after a disconnect vs a crash": "client disconnect",
    "Faults: kill -9 through edge-ai up": "nats-server",
    "Vision: router vs in-process detector vs bare onnxruntime": "bare session.run",
    "RAG: embedder, ingest, search vs exact faiss": "int8, batch 1 (new)",
}
"""Each section's title and the label of a row that must carry numbers."""
NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def numbers(line: str) -> list[float]:
    cells = [c.strip() for c in re.split(r"\||\s{2,}", line) if c.strip()]
    return [float(c) for c in cells if NUMBER.fullmatch(c)]


def colored_pixels(png: Path) -> int:
    """Pixels in a clear colour: axes and text are grey, so these are the plotted data."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


@pytest.mark.timeout(480)  # ~200 CPU-seconds of stacks starting (LiteLLM alone ~20) on 2 cores
def test_tiny_report_has_every_section_with_numbers_and_charts(tmp_path: Path) -> None:
    """Every comparison writes its section with numeric rows (the gateway's added latency at
    1, 8 and 32 clients, stream and not, requests/s and RSS of both gateways; every stage of
    the RAG bench on the real embedder and engine, HNSW exact on a small index), and every
    chart it links is a PNG with data drawn in it."""
    run = subprocess.run(
        [sys.executable, str(REPORT), "--tiny", "--jobs", "7", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert re.search(r"CPU: .+, \d+ cores; RAM [\d.]+ GiB; kernel \S+", markdown)
    assert re.search(r"git revision `[0-9a-f]{7,}`", markdown)
    found = sections(markdown)
    assert list(found) == list(SECTIONS)
    for title, label in SECTIONS.items():
        body = found[title]
        assert "This section failed" not in body, body
        rows = [line for line in body.splitlines() if label in line and numbers(line)]
        assert rows, f"{title}: no numbers in a {label!r} row:\n{body}"
        assert "Alone: `python bench/" in body

    gateway = found["Cloud path: router vs LiteLLM proxy"]
    for mode in ("non-stream", "stream TTFT", "stream total"):
        for clients in (1, 8, 32):
            row = next(r for r in gateway.splitlines() if r.startswith(f"| {mode} | {clients} |"))
            assert len(numbers(row)) >= 6, row  # clients, direct p50, 4 added latencies
    for target in ("router", "litellm"):
        row = next(r for r in gateway.splitlines() if r.startswith(f"| {target} |"))
        rps, rss, errors = numbers(row)
        assert rps > 0, row
        assert rss > 20, row  # MiB: a Python gateway is never smaller
        assert errors == 0, row

    rag = found["RAG: embedder, ingest, search vs exact faiss"]  # bench/rag.py --short
    for label in (
        "as shipped, batch 32 (old)",
        "old: as shipped, 200/32 tokens",
        "new defaults: int8",
        "faiss IndexFlatIP (exact)",
        "qdrant-edge defaults m=16",
        "embed+search (Library.search, 1 text)",
    ):
        assert label in rag, rag
    store_rows = [line for line in rag.splitlines() if "store default m=" in line]
    assert store_rows, rag
    assert all(line.split()[-3] == "1.000" for line in store_rows), rag  # exact on a small index

    charts = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    assert {"benchmarks/gateway_latency.png", "benchmarks/gateway_ttft.png"} <= set(charts)
    for chart in charts:
        png = tmp_path / chart
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
        # a tiny run's boxes can be flat (2 equal values): their median line still shows
        assert colored_pixels(png) > 20, f"{chart}: nothing plotted"
