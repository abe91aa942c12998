"""A Qdrant server through qdrant-client (`url`), or qdrant-client's local mode (`path`:
a pure-Python stand-in for the engine, for tests and tiny sets). Collection `c` is the
server's collection `<prefix>c`, so several boards can share one server."""

from collections.abc import Iterator
from typing import Any

import qdrant_edge as qe
from qdrant_client import QdrantClient, models

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


def _filter(where: Where | None, where_not: Where | None = None) -> models.Filter | None:
    def conditions(w: Where) -> list[models.Condition]:
        return [
            models.FieldCondition(
                key=k,
                match=models.MatchAny(any=v) if isinstance(v, list) else models.MatchValue(value=v),
            )
            for k, v in w.items()
        ]

    if not where and not where_not:
        return None
    return models.Filter(must=conditions(where or {}), must_not=conditions(where_not or {}))


def _sparse(vector: qe.SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


class QdrantServerStore:
    def __init__(
        self,
        *,
        url: str = "",
        path: str = "",
        api_key: str = "",
        prefix: str = "",
        hnsw: HnswTuning = DEFAULT_HNSW,
    ) -> None:
        if url:
            self._client = QdrantClient(url=url, api_key=api_key or None)
        else:
            self._client = QdrantClient(path=path or ":memory:")
        self._prefix, self._hnsw = prefix, hnsw
        self._rescore = (
            models.QuantizationSearchParams(rescore=True, oversampling=hnsw.oversampling)
            if hnsw.quantize
            else None
        )
        self._server = bool(url)  # local mode has no indexes and searches exactly
        self._bm25 = qe.Bm25()  # the same BM25 vectors as the embedded store

    def _name(self, collection: str) -> str:
        return self._prefix + collection

    def collections(self) -> list[str]:
        names = (c.name for c in self._client.get_collections().collections)
        return sorted(n[len(self._prefix) :] for n in names if n.startswith(self._prefix))

    def create(self, collection: str, dimension: int) -> None:
        name = self._name(collection)
        if self._client.collection_exists(name):
            params = self._client.get_collection(name).config.params.vectors
            have = params[DENSE].size if isinstance(params, dict) else None
            if have != dimension:
                raise StoreError(
                    f"collection {collection!r} holds {have}-dimension vectors, not {dimension}"
                )
            return
        self._client.create_collection(
            name,
            vectors_config={
                DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            },
            quantization_config=models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=QUANTILE, always_ram=True
                )
            )
            if self._hnsw.quantize
            else None,
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            hnsw_config=models.HnswConfigDiff(
                m=self._hnsw.m,
                ef_construct=self._hnsw.ef_construct,
                full_scan_threshold=self._hnsw.full_scan_threshold,
            ),
        )
        for field in ("document_id", "state") if self._server else ():
            self._client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)

    def drop(self, collection: str) -> None:
        self._client.delete_collection(self._name(collection))

    def _known(self, collection: str) -> str:
        name = self._name(collection)
        if not self._client.collection_exists(name):
            raise StoreError(f"no collection {collection!r} in the store")
        return name

    def upsert(self, collection: str, chunks: list[StoredChunk]) -> None:
        points = [
            models.PointStruct(
                id=c.id,
                vector={DENSE: c.vector, SPARSE: _sparse(self._bm25.embed_document(c.text))},
                payload=c.payload,
            )
            for c in chunks
        ]
        self._client.upsert(self._known(collection), points, wait=True)

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
        params = (
            models.SearchParams(hnsw_ef=max(self._hnsw.ef, limit), quantization=self._rescore)
            if self._server
            else None
        )
        if text is None:
            response = self._client.query_points(
                self._known(collection),
                query=vector,
                using=DENSE,
                query_filter=_filter(where),
                search_params=params,
                limit=limit,
                with_payload=True,
                score_threshold=score_threshold,
            )
        else:
            sparse = _sparse(self._bm25.embed_query(text))
            response = self._client.query_points(
                self._known(collection),
                prefetch=[
                    models.Prefetch(
                        query=vector,
                        using=DENSE,
                        filter=_filter(where),
                        params=params,
                        limit=limit * PREFETCH,
                    ),
                    models.Prefetch(
                        query=sparse, using=SPARSE, filter=_filter(where), limit=limit * PREFETCH
                    ),
                ],
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                limit=limit,
                with_payload=True,
                score_threshold=score_threshold,
            )
        return [
            ScoredChunk(id=str(p.id), score=p.score, payload=p.payload or {})
            for p in response.points
        ]

    def set_payload(self, collection: str, where: Where, payload: dict[str, Any]) -> None:
        selector = models.FilterSelector(filter=_filter(where))  # type: ignore[arg-type]
        self._client.set_payload(self._known(collection), payload, selector, wait=True)

    def delete(self, collection: str, where: Where, where_not: Where | None = None) -> None:
        selector = models.FilterSelector(filter=_filter(where, where_not))  # type: ignore[arg-type]
        self._client.delete(self._known(collection), selector, wait=True)

    def count(self, collection: str, where: Where | None = None) -> int:
        return self._client.count(self._known(collection), _filter(where), exact=True).count

    def payloads(self, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
        name, offset = self._known(collection), None
        while True:
            records, offset = self._client.scroll(
                name, limit=SCROLL_PAGE, offset=offset, with_payload=True
            )
            yield from ((str(r.id), r.payload or {}) for r in records)
            if offset is None:
                return

    def optimize(self, collection: str) -> None:
        """The server indexes by itself."""

    def close(self) -> None:
        self._client.close()
