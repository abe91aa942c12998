"""The default store: the real Qdrant engine in-process (qdrant-edge), one shard per
collection under `root/<collection>`, on disk with its write-ahead log (a write that
returned survives a kill). Sparse BM25 vectors with IDF make hybrid search possible."""

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from edge_rag.errors import StoreError
from edge_rag.store.base import (
    DEFAULT_HNSW,
    DENSE,
    PREFETCH,
    QUANTILE,
    RRF_K,
    SCROLL_PAGE,
    SPARSE,
    HnswTuning,
    ScoredChunk,
    StoredChunk,
    Where,
)

INDEXED = (("document_id", qe.PayloadSchemaType.Keyword), ("state", qe.PayloadSchemaType.Keyword))
"""Payload fields every write or search filters on."""


def _filter(where: Where | None, where_not: Where | None = None) -> qe.Filter | None:
    def conditions(w: Where) -> list[Any]:
        return [
            qe.FieldCondition(
                key=k, match=qe.MatchAny(v) if isinstance(v, list) else qe.MatchValue(v)
            )
            for k, v in w.items()
        ]

    if not where and not where_not:
        return None
    return qe.Filter(must=conditions(where or {}), must_not=conditions(where_not or {}) or None)


class QdrantEdgeStore:
    def __init__(self, root: Path, hnsw: HnswTuning = DEFAULT_HNSW) -> None:
        self._root = root
        self._hnsw = hnsw
        self._shards: dict[str, qe.EdgeShard] = {}
        self._checked: dict[str, int] = {}
        """Dimension each open shard was created or loaded with a config of (checked)."""
        self._lock = threading.Lock()  # guards the dict; shards lock themselves
        self._bm25 = qe.Bm25()
        self._rescore = (
            qe.QuantizationSearchParams(rescore=True, oversampling=hnsw.oversampling)
            if hnsw.quantize
            else None
        )
        root.mkdir(parents=True, exist_ok=True)

    def _config(self, dimension: int) -> qe.EdgeConfig:
        hnsw = qe.HnswIndexConfig(
            m=self._hnsw.m,
            ef_construct=self._hnsw.ef_construct,
            full_scan_threshold=self._hnsw.full_scan_threshold,
        )
        int8 = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=QUANTILE, always_ram=True
        )
        dense = qe.EdgeVectorParams(
            size=dimension,
            distance=qe.Distance.Cosine,
            quantization_config=int8 if self._hnsw.quantize else None,
        )
        return qe.EdgeConfig(
            vectors={DENSE: dense},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=hnsw,
        )

    def _shard(self, collection: str) -> qe.EdgeShard:
        with self._lock:
            if shard := self._shards.get(collection):
                return shard
            path = self._root / collection
            if not path.is_dir():
                raise StoreError(f"no collection {collection!r} in the store")
            shard = self._shards[collection] = qe.EdgeShard.load(str(path))
            return shard

    def collections(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if p.is_dir())

    def create(self, collection: str, dimension: int) -> None:
        path = self._root / collection
        with self._lock:
            if self._checked.get(collection) == dimension and collection in self._shards:
                return  # every ingest ensures its collection: reloading took 15% of one
            if collection in self._shards:
                shard = self._shards.pop(collection)
                shard.close()
            if not path.is_dir():
                shard = qe.EdgeShard.create(str(path), self._config(dimension))
                for field, schema in INDEXED:
                    shard.update(qe.UpdateOperation.create_field_index(field, schema))
            else:
                try:  # loading with a config checks that the stored vectors fit it
                    shard = qe.EdgeShard.load(str(path), self._config(dimension))
                except Exception as exc:  # qdrant-edge raises untyped errors
                    raise StoreError(f"collection {collection!r}: {exc}") from exc
            self._shards[collection] = shard
            self._checked[collection] = dimension

    def drop(self, collection: str) -> None:
        with self._lock:
            self._checked.pop(collection, None)
            if shard := self._shards.pop(collection, None):
                shard.close()
            shutil.rmtree(self._root / collection, ignore_errors=True)

    def upsert(self, collection: str, chunks: list[StoredChunk]) -> None:
        points = [
            qe.Point(
                id=c.id,
                vector={DENSE: c.vector, SPARSE: self._bm25.embed_document(c.text)},
                payload=c.payload,
            )
            for c in chunks
        ]
        self._shard(collection).update(qe.UpdateOperation.upsert_points(points))

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
        params = qe.SearchParams(hnsw_ef=max(self._hnsw.ef, limit), quantization=self._rescore)
        dense = qe.Query.Nearest(vector, using=DENSE)
        if text is None:
            request = qe.QueryRequest(
                limit=limit,
                query=dense,
                filter=_filter(where),
                params=params,
                with_payload=True,
                score_threshold=score_threshold,
            )
        else:
            sparse = qe.Query.Nearest(self._bm25.embed_query(text), using=SPARSE)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=limit * PREFETCH, query=q, filter=_filter(where), params=p)
                    for q, p in ((dense, params), (sparse, None))
                ],
                query=qe.Fusion.Rrf(k=RRF_K),
                with_payload=True,
                score_threshold=score_threshold,
            )
        return [
            ScoredChunk(id=str(p.id), score=p.score, payload=p.payload or {})
            for p in self._shard(collection).query(request)
        ]

    def set_payload(self, collection: str, where: Where, payload: dict[str, Any]) -> None:
        op = qe.UpdateOperation.set_payload_by_filter(_filter(where), payload)
        self._shard(collection).update(op)

    def delete(self, collection: str, where: Where, where_not: Where | None = None) -> None:
        op = qe.UpdateOperation.delete_points_by_filter(_filter(where, where_not))
        self._shard(collection).update(op)

    def count(self, collection: str, where: Where | None = None) -> int:
        return self._shard(collection).count(qe.CountRequest(filter=_filter(where), exact=True))

    def payloads(self, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
        shard, offset = self._shard(collection), None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True)
            records, offset = shard.scroll(request)
            yield from ((str(r.id), r.payload or {}) for r in records)
            if offset is None:
                return

    def optimize(self, collection: str) -> None:
        self._shard(collection).optimize()

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            self._checked.clear()
