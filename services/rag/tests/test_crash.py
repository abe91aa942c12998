"""A real process killed (SIGKILL) in the middle of an ingest leaves, once the next one
recovers, no duplicate and no orphan chunk: the old version stays whole and searchable,
and a re-ingest completes."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edge_common.protocol import rag as proto
from edge_rag.library import Library, Source, results

CHILD = """
import sys
from pathlib import Path
from edge_common.protocol import rag as proto
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder
from edge_rag.library import Library, Source
from edge_rag.registry import Registry
from edge_rag.store import StoreConfig, open_store

data, source = Path(sys.argv[1]), Path(sys.argv[2])
spec = default_embedder()
library = Library(
    Embedder(spec, create_backend(spec)),
    open_store(StoreConfig(), data),
    Registry(data / "registry.sqlite3"),
    chunk_tokens=200,
    overlap_tokens=32,
    batch=4,
)
for step in library.ingest("docs", [Source(source.name, source.read_bytes)]):
    if isinstance(step, proto.Progress):  # a batch (or the file) is stored
        print("stored", step.chunks_done, flush=True)
"""


def version(n: int) -> str:
    return "\n\n".join(
        f"Version {n}, paragraph {i}: the quick brown fox number {i} jumps over dog {n}." * 3
        for i in range(120)
    )


def test_kill_during_reingest(tmp_path: Path, open_library: Callable[[Path], Library]) -> None:
    """SIGKILL after a few batches of v2: recovery keeps v1 whole (0 duplicates, 0 orphans,
    no v2 text found), then ingesting v2 again replaces it cleanly."""
    data, doc = tmp_path / "data", tmp_path / "manual.txt"
    doc.write_text(version(1))
    library = open_library(data)
    [v1] = results(library.ingest("docs", [Source(doc.name, doc.read_bytes)]))
    library.store.close()
    library.registry.close()

    doc.write_text(version(2))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(doc)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    stored = 0  # the child's logs go to stdout too
    while stored < 3:  # three batches of v2 are in the store, the rest is not
        line = child.stdout.readline()
        assert line, "the child ended before storing three batches"
        stored += line.startswith("stored ")
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL

    library = open_library(data)
    try:
        assert library.registry.documents(status="ingesting")  # the crash left it in flight
        assert library.recover() == 1
        audit = library.audit("docs")
        assert (audit.chunks, audit.duplicates, audit.orphans) == (v1.chunks, 0, 0)
        hits = library.search(
            proto.SearchRequest(request_id="s", collection="docs", query="Version 2", top_k=50)
        ).hits
        assert hits
        assert all(h.text.startswith("Version 1") for h in hits)

        [again] = results(library.ingest("docs", [Source(doc.name, doc.read_bytes)]))
        assert again.outcome == "replaced"
        audit = library.audit("docs")
        assert (audit.chunks, audit.duplicates, audit.orphans) == (again.chunks, 0, 0)
    finally:
        library.store.close()
        library.registry.close()
