"""The vector store's one interface: dense (and optionally BM25) vectors with a payload per
chunk, in named collections; upsert, filtered search, set-payload and delete by filter.

`Where` is an AND of payload conditions (a value matches equal; a list, any of it). Hybrid
search fuses the dense and the BM25 hits by reciprocal rank; BM25 vectors are made by
qdrant-edge's own Bm25 model for every implementation, so they score alike.
"""

from collections.abc import Iterator
from typing import Any, Protocol

import msgspec
from edge_common.protocol.rag import FilterValue

Where = dict[str, FilterValue]
RRF_K = 60
"""Reciprocal rank fusion's k (the usual 60: ranks past the first few weigh alike)."""
PREFETCH = 4
"""Hybrid search fuses this many times `limit` candidates of each kind."""
DENSE, SPARSE = "dense", "bm25"
"""The named vectors of every collection."""
SCROLL_PAGE = 1024
QUANTILE = 0.99
"""int8 quantization's range covers this share of the vector components (outliers clip)."""
"""Points read per page when every payload of a collection is walked."""


class StoredChunk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    """A UUID."""
    vector: list[float]
    text: str
    """What BM25 indexes (also kept in the payload for citations)."""
    payload: dict[str, Any]


class ScoredChunk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    score: float
    payload: dict[str, Any]


class HnswTuning(msgspec.Struct, frozen=True, kw_only=True):
    """HNSW graph settings. qdrant-edge's defaults (m 16, ef_construct 100, ef = the limit)
    gave recall@10 0.66 at 10k chunks in bench/rag.py (0.89 at 100k in the issue). At 100k
    on 2 cores (bench/rag.py's vectors, through search() with the live filter): m 32,
    ef_construct 128 builds in ~80 s and gives recall@10 0.94 at ef 64 (0.8 ms p50),
    0.97-0.98 at ef 128 (0.94 ms p50 on the bare shard, 1.1 ms through search() on a busy
    machine), 0.99 at ef 192 (1.5 ms). m 16/ef_construct 100 needed ef 256 for 0.97
    (1.2 ms); ef_construct 256 doubled the build for little more recall."""

    m: int = 32
    ef_construct: int = 128
    ef: int = 128
    """Search-time candidate list (at least the limit): recall for time."""
    full_scan_threshold: int = 10_000
    """Below this many KB of vectors a segment is searched exactly (no graph)."""
    quantize: bool = True
    """Keep an int8 copy of the vectors in RAM (scalar quantization, 1/4 of the float
    size) that the graph is built and walked on; the best `oversampling` x limit are then
    rescored on the float vectors. Same recall, less work (loaded 2-core machine): at 30k,
    store.search p50 0.55 vs 0.87 ms wall, 0.79 vs 1.11 ms CPU, recall@10 0.995 vs 0.993;
    at 100k (bench/rag.py) ef 128 gave recall@10 0.98 at 0.67 ms p50, the build 73 s."""
    oversampling: float = 2.0


DEFAULT_HNSW = HnswTuning()


class VectorStore(Protocol):
    """One implementation per engine (qdrant-edge in-process, a Qdrant server through
    qdrant-client). Blocking calls: run them in a thread."""

    def collections(self) -> list[str]: ...

    def create(self, collection: str, dimension: int) -> None:
        """Make `collection` if absent (idempotent); StoreError if it exists with another
        dimension."""
        ...

    def drop(self, collection: str) -> None: ...

    def upsert(self, collection: str, chunks: list[StoredChunk]) -> None: ...

    def search(
        self,
        collection: str,
        vector: list[float],
        *,
        limit: int,
        where: Where,
        text: str | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredChunk]:
        """Best `limit` chunks meeting `where`; with `text`, dense and BM25 fused (RRF)."""
        ...

    def set_payload(self, collection: str, where: Where, payload: dict[str, Any]) -> None: ...

    def delete(self, collection: str, where: Where, where_not: Where | None = None) -> None:
        """Delete the chunks meeting `where` and none of `where_not`'s conditions."""
        ...

    def count(self, collection: str, where: Where | None = None) -> int: ...

    def payloads(self, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every chunk's id and payload (recovery, consistency checks)."""
        ...

    def optimize(self, collection: str) -> None:
        """Build indexes after a bulk write (a no-op where the engine does it itself)."""
        ...

    def close(self) -> None: ...
