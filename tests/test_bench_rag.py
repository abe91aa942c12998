"""The RAG bench's short form (bench/rag.py --short) as a test, so its code cannot rot: every
stage runs on the real embedder, Library and qdrant-edge, and prints its rows."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "rag.py"


def test_short_rag_bench_prints_every_stage() -> None:
    """Embedder variants, both ingests, the exact index, both HNSW graphs and embed+search
    each print a row, and HNSW recall@10 on the small index is perfect (exact search)."""
    run = subprocess.run(
        [sys.executable, str(BENCH), "--short"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    out = run.stdout
    for label in (
        "as shipped, batch 32 (old)",
        "int8, batch 1 (new)",
        "old: as shipped, 200/32 tokens",
        "new defaults: int8",
        "faiss IndexFlatIP (exact)",
        "qdrant-edge defaults m=16",
        "embed+search (Library.search, 1 text)",
    ):
        assert label in out, out
    store_rows = [line for line in out.splitlines() if "store default m=" in line]
    assert store_rows, out
    assert all(line.split()[-3] == "1.000" for line in store_rows), out
