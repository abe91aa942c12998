"""The RAG logic, transport-free: ingest documents into collections, search them, delete
them, list them; blocking calls (run them in a thread).

How a document is (re)written so that neither readers nor a crash ever see two versions:
1. the registry records the ingest in flight (its new generation, its chunk count);
2. its chunks are written with `state: pending` (searches only see `state: live`);
3. under the swap lock (which searches take too), the new generation goes live and every
   other generation of the document is deleted; then the registry commits it.
`recover()` (at startup) finishes or undoes whatever a crash left in flight.
"""

import hashlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import msgspec
import structlog
from edge_common.protocol import rag as proto

from edge_rag.chunking import Chunk, chunk_blocks
from edge_rag.embed import Embedder
from edge_rag.errors import InvalidInput, NotFound, UnsupportedDocument
from edge_rag.loaders import MEDIA_TYPES, load, media_type_of
from edge_rag.registry import Document, Registry
from edge_rag.store import StoredChunk, VectorStore

log = structlog.get_logger(__name__)
IDS = uuid.UUID("6f1c54a3-3c1e-4f55-9b61-3c0e2f3f8a10")
"""Namespace of document and chunk ids (uuid5: the same input, the same id)."""


class Audit(msgspec.Struct, frozen=True, kw_only=True):
    """What the store holds that the registry does not account for (both 0 when healthy)."""

    chunks: int
    duplicates: int
    """Live chunks sharing a (document, chunk index) with another."""
    orphans: int
    """Chunks of no document, or of a generation the registry does not name."""


def finish(steps: Generator[int, None, proto.FileResult]) -> proto.FileResult:
    """Run an ingest (Library.ingest) to its end, ignoring its progress."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def document_id(collection: str, source: str) -> str:
    return str(uuid.uuid5(IDS, f"{collection}\0{source}"))


def source_of(path: Path) -> str:
    """A file's path as its documents' `source`: a name's bytes that are not UTF-8 (a
    filesystem takes any) written as `\\xNN` (the registry, the store and ids need text)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def files_under(paths: list[Path]) -> list[Path]:
    """The files `paths` name: files as given, folders walked (supported types, sorted);
    InvalidInput for a path that does not exist."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_TYPES
            )
        else:
            raise InvalidInput(f"{path}: no such file or folder")
    return found


class Library:
    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        registry: Registry,
        *,
        chunk_tokens: int,
        overlap_tokens: int,
        batch: int = 64,
    ) -> None:
        self.embedder, self.store, self.registry = embedder, store, registry
        # room for the special tokens and the section line the embedder also reads
        self._chunk_tokens = min(chunk_tokens, embedder.max_tokens - 16)
        self._overlap, self._batch = overlap_tokens, batch
        self._swap = threading.Lock()

    # collections
    def ensure_collection(self, name: str) -> None:
        row = self.registry.collection(name)
        if row and row.model != self.embedder.model:
            raise InvalidInput(
                f"collection {name!r} was embedded with {row.model}, not {self.embedder.model}"
            )
        self.store.create(name, self.embedder.dimension)
        self.registry.add_collection(name, self.embedder.model, self.embedder.dimension)

    def _known(self, name: str) -> None:
        if self.registry.collection(name) is None:
            raise NotFound(f"No collection `{name}`.")

    # ingest
    def ingest(
        self,
        collection: str,
        source: str,
        content: bytes,
        *,
        media_type: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Generator[int, None, proto.FileResult]:
        """Ingest one document, yielding the chunks stored so far after each batch; returns
        (StopIteration.value) its FileResult. Closing the generator early undoes it."""
        media = media_type_of(source, media_type)
        digest = hashlib.sha256(content).hexdigest()
        doc_id = document_id(collection, source)
        old = self.registry.document(collection, id=doc_id)
        if old and old.status == "ready" and old.content_hash == digest:
            return proto.FileResult(
                source=source, outcome="unchanged", document_id=doc_id, chunks=len(old.chunk_ids)
            )
        chunks = chunk_blocks(
            load(source, content, media),
            self.embedder.count_tokens,
            max_tokens=self._chunk_tokens,
            overlap=self._overlap,
        )
        if not chunks:
            raise UnsupportedDocument(f"{source}: no text found")
        self.ensure_collection(collection)
        generation = self.registry.begin_ingest(
            doc_id, collection, source, media, digest, len(chunks)
        )
        base = {"document_id": doc_id, "source": source, "media_type": media}
        base |= {"generation": generation, "state": "pending", "metadata": metadata or {}}
        ids: list[str] = []
        committed = False
        try:
            for start in range(0, len(chunks), self._batch):
                batch = chunks[start : start + self._batch]
                ids += self._write(collection, doc_id, generation, batch, base)
                yield len(ids)
            with self._swap:
                self.store.set_payload(
                    collection, {"document_id": doc_id, "generation": generation}, {"state": "live"}
                )
                self.store.delete(collection, {"document_id": doc_id}, {"generation": generation})
                self.registry.commit_ingest(doc_id, ids)
                committed = True
        finally:
            if not committed:  # failed or closed early: take the pending chunks back out
                self._settle(self.registry.document(collection, id=doc_id))
        outcome = "replaced" if old and old.generation else "added"
        log.info("rag.document_ingested", source=source, chunks=len(ids), outcome=outcome)
        return proto.FileResult(source=source, outcome=outcome, document_id=doc_id, chunks=len(ids))

    def _write(
        self, collection: str, doc_id: str, generation: int, batch: list[Chunk], base: dict
    ) -> list[str]:
        vectors = self.embedder.embed([c.embedding_text() for c in batch]).vectors
        stored = [
            StoredChunk(
                id=str(uuid.uuid5(IDS, f"{doc_id}/{generation}/{c.index}")),
                vector=vector.tolist(),
                text=c.text,
                payload=base
                | {"chunk": c.index, "text": c.text, "section": c.section, "page": c.page},
            )
            for c, vector in zip(batch, vectors, strict=True)
        ]
        self.store.upsert(collection, stored)
        return [s.id for s in stored]

    def optimize(self, collection: str) -> None:
        """Index what an ingest wrote (qdrant-edge builds its HNSW graph only when asked)."""
        if self.registry.collection(collection) is not None:
            self.store.optimize(collection)

    # recovery
    def recover(self) -> int:
        """Settle every document a crash left in flight; how many there were."""
        pending = self.registry.documents(status="ingesting")
        pending += self.registry.documents(status="deleting")
        for doc in pending:
            self._settle(doc)
        if pending:
            log.warning("rag.recovered", documents=len(pending))
        return len(pending)

    def _settle(self, doc: Document | None) -> None:
        """Roll an in-flight document forward (its new generation went live whole) or back
        (its pending chunks deleted, the committed generation kept)."""
        if doc is None:
            return
        collection, where = doc.collection, {"document_id": doc.id}
        if doc.collection not in self.store.collections():
            self.registry.remove(doc.id)
            return
        if doc.status == "deleting":
            self.store.delete(collection, where)
            self.registry.remove(doc.id)
            return
        new = {"document_id": doc.id, "generation": doc.pending_generation, "state": "live"}
        with self._swap:
            if doc.pending_chunks and self.store.count(collection, new) == doc.pending_chunks:
                self.store.delete(collection, where, {"generation": doc.pending_generation})
                ids = [pid for pid, p in self.store.payloads(collection) if _is(p, new)]
                self.registry.commit_ingest(doc.id, ids)
                return
            self.store.delete(collection, where, {"generation": doc.generation})
            kept = self.store.count(collection, where)
            if kept != len(doc.chunk_ids):  # the old version is not whole either: drop it
                self.store.delete(collection, where)
                self.registry.remove(doc.id)
                return
            self.registry.abandon_ingest(doc.id)

    # search, delete, list
    def search(self, request: proto.SearchRequest) -> proto.SearchResult:
        self._known(request.collection)
        started = time.perf_counter()
        embedded = self.embedder.embed([request.query])
        embedded_at = time.perf_counter()
        where: dict[str, Any] = {**request.filter, "state": "live"}
        with self._swap:
            hits = self.store.search(
                request.collection,
                embedded.vectors[0].tolist(),
                limit=request.top_k,
                where=where,
                text=request.query if request.mode == "hybrid" else None,
                score_threshold=request.score_threshold,
            )
        return proto.SearchResult(
            hits=[_hit(h.id, h.score, h.payload) for h in hits],
            model=self.embedder.model,
            query_tokens=embedded.tokens[0],
            embed_ms=round((embedded_at - started) * 1e3, 3),
            search_ms=round((time.perf_counter() - embedded_at) * 1e3, 3),
        )

    def delete(self, request: proto.DeleteRequest) -> proto.Deleted:
        self._known(request.collection)
        if not (request.document_id or request.source):
            documents, chunks = self.registry.counts(request.collection)
            self.store.drop(request.collection)
            self.registry.remove_collection(request.collection)
            log.info("rag.collection_deleted", collection=request.collection)
            return proto.Deleted(documents=documents, chunks=chunks)
        doc = self.registry.document(
            request.collection, id=request.document_id, source=request.source
        )
        if doc is None:
            name = request.document_id or request.source
            raise NotFound(f"No document `{name}` in collection `{request.collection}`.")
        self.registry.begin_delete(doc.id)
        with self._swap:
            self.store.delete(request.collection, {"document_id": doc.id})
            self.registry.remove(doc.id)
        log.info("rag.document_deleted", source=doc.source, chunks=len(doc.chunk_ids))
        return proto.Deleted(documents=1, chunks=len(doc.chunk_ids))

    def listing(self, request: proto.CollectionsRequest) -> proto.Collections:
        infos = []
        for row in self.registry.collections():
            documents, chunks = self.registry.counts(row.name)
            infos.append(
                proto.CollectionInfo(
                    name=row.name,
                    model=row.model,
                    dimension=row.dimension,
                    documents=documents,
                    chunks=chunks,
                )
            )
        docs = []
        if request.documents_of:
            self._known(request.documents_of)
            docs = [
                proto.DocumentInfo(
                    id=d.id,
                    source=d.source,
                    content_hash=d.content_hash,
                    chunks=len(d.chunk_ids),
                    status=d.status,
                    updated_at=d.updated_at,
                )
                for d in self.registry.documents(request.documents_of)
            ]
        return proto.Collections(collections=infos, documents=docs)

    def audit(self, collection: str) -> Audit:
        """Check the store against the registry (tests, operators)."""
        live = {d.id: d.generation for d in self.registry.documents(collection) if d.generation}
        seen: Counter[tuple[str, int]] = Counter()
        total = orphans = 0
        for _, payload in self.store.payloads(collection):
            total += 1
            doc = payload.get("document_id", "")
            if live.get(doc) != payload.get("generation") or payload.get("state") != "live":
                orphans += 1
            else:
                seen[(doc, payload.get("chunk", -1))] += 1
        duplicates = sum(n - 1 for n in seen.values())
        return Audit(chunks=total, duplicates=duplicates, orphans=orphans)


def _is(payload: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(payload.get(k) == v for k, v in where.items())


def _hit(id: str, score: float, p: dict[str, Any]) -> proto.Hit:
    return proto.Hit(
        id=id,
        score=score,
        document_id=p.get("document_id", ""),
        source=p.get("source", ""),
        chunk=p.get("chunk", 0),
        text=p.get("text", ""),
        section=p.get("section", ""),
        page=p.get("page"),
        metadata=p.get("metadata") or {},
    )
