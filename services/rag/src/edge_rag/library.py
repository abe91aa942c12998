"""The RAG logic, transport-free: ingest documents into collections, search them, delete
them, list them; blocking calls (run them in a thread).

How a document is (re)written so that neither readers nor a crash ever see two versions:
1. the registry records the ingest in flight (its new generation, its chunk count);
2. its chunks are written with `state: pending` (searches only see `state: live`);
3. under the swap lock (which searches take too), the new generation goes live and every
   other generation of the document is deleted; then the registry commits it.
`recover()` (at startup) finishes or undoes whatever a crash left in flight.
"""

import contextlib
import hashlib
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from edge_common.protocol import rag as proto

from edge_rag.chunking import Chunk, chunk_blocks
from edge_rag.embed import Embedder
from edge_rag.errors import InvalidInput, NotFound, RagError, UnsupportedDocument
from edge_rag.loaders import MEDIA_TYPES, load, media_type_of, source_of
from edge_rag.registry import Document, Registry
from edge_rag.store import StoredChunk, VectorStore

log = structlog.get_logger(__name__)
T = TypeVar("T")
AHEAD = 2
"""Embedded batches the ingest's thread ahead may hold ready (of `batch` chunks each)."""
IDS = uuid.UUID("6f1c54a3-3c1e-4f55-9b61-3c0e2f3f8a10")
"""Namespace of document and chunk ids (uuid5: the same input, the same id)."""


class Audit(msgspec.Struct, frozen=True, kw_only=True):
    """What the store holds that the registry does not account for (both 0 when healthy)."""

    chunks: int
    duplicates: int
    """Live chunks sharing a (document, chunk index) with another."""
    orphans: int
    """Chunks of no document, or of a generation the registry does not name."""


class Source(msgspec.Struct, frozen=True):
    """A document to ingest."""

    name: str
    """Its `source`: what its hits and the registry name it by."""
    read: Callable[[], bytes]
    """Its bytes (called in the ingest's thread ahead, when its turn nears)."""
    media_type: str = ""
    """As declared ("": by the name's extension)."""

    @classmethod
    def of(cls, name: str, content: bytes, media_type: str = "") -> "Source":
        return cls(name, lambda: content, media_type)


Step = proto.Progress | proto.FileResult


def results(steps: Iterator[Step]) -> list[proto.FileResult]:
    """Run an ingest (Library.ingest) to its end: its documents' results."""
    return [step for step in steps if isinstance(step, proto.FileResult)]


class _Doc(msgspec.Struct, frozen=True, kw_only=True):
    """A document read and chunked, to be (re)written."""

    source: str
    id: str
    media: str
    digest: str
    chunks: list[Chunk]
    replacing: bool
    """A version of it is stored (the outcome is `replaced`): read ahead, and still so when
    it is written (an ingest writes each name once; deletes wait for the ingest's turn)."""


class _Batch(msgspec.Struct, frozen=True, kw_only=True):
    """Chunks `start`.. of a document, embedded."""

    doc: _Doc
    start: int
    vectors: Any
    """float32 [chunks, dimension] (numpy)."""


class _Writing(msgspec.Struct, kw_only=True):
    """The document whose chunks are being stored."""

    doc: _Doc
    generation: int
    base: dict[str, Any]
    """The payload every chunk of it carries."""
    ids: list[str] = msgspec.field(default_factory=list)


_END = object()


class _Raised(msgspec.Struct, frozen=True):
    error: BaseException


@contextlib.contextmanager
def _ahead(items: Iterator[T], depth: int) -> Iterator[Iterator[T]]:
    """`items` made in a thread of their own, at most `depth` ahead of their reader (an error
    in making one is raised to the reader there). Leaving the block stops the thread after
    the item in hand and waits for it."""
    ready: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: object) -> None:
        if not stop.is_set():  # once stopped, one put at most is under way: it fits
            ready.put(item)

    def make() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(item)
            put(_END)
        except BaseException as exc:  # the reader raises it
            put(_Raised(exc))

    def read() -> Iterator[T]:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item

    thread = threading.Thread(target=make, name="ingest-ahead", daemon=True)
    thread.start()
    try:
        yield read()
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                ready.get_nowait()
        thread.join()


def document_id(collection: str, source: str) -> str:
    return str(uuid.uuid5(IDS, f"{collection}\0{source}"))


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


def sources_under(paths: list[Path]) -> list[Source]:
    """The documents `paths` name (files_under), each read when its turn nears."""
    return [Source(source_of(p), p.read_bytes) for p in files_under(paths)]


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
        self.compatible(name)
        self.store.create(name, self.embedder.dimension)
        self.registry.add_collection(name, self.embedder.model, self.embedder.dimension)

    def _known(self, name: str) -> None:
        if self.registry.collection(name) is None:
            raise NotFound(f"No collection `{name}`.")

    # ingest
    def ingest(
        self, collection: str, sources: list[Source], *, metadata: dict[str, str] | None = None
    ) -> Generator[Step, None, None]:
        """Ingest `sources` in order (of two with one name, the last), yielding a Progress
        after each batch of chunks stored and each document's FileResult when it ends (then a
        Progress). A document that cannot be read, is of no supported type, has no text or
        cannot be embedded fails alone (outcome `failed`, its batches stored taken out).

        Reading, chunking and embedding run in a thread of their own, up to AHEAD batches
        before the store and registry writes made here, so the embedder's cores do not wait
        for those (nor for the next document's chunking). Closing the generator early stops
        that thread and undoes the document in hand."""
        self.compatible(collection)
        sources = list({s.name: s for s in sources}.values())  # a name given twice: the last
        files = stored = 0
        writing: _Writing | None = None
        with _ahead(self._embedded(collection, sources), AHEAD) as items:
            try:
                for item in items:
                    if isinstance(item, _Batch):
                        if item.start == 0:
                            writing = self._begin(collection, item.doc, metadata or {})
                        assert writing is not None  # a document's batches come in order
                        self._write(collection, writing, item)
                        yield proto.Progress(
                            files_done=files,
                            files_total=len(sources),
                            chunks_done=stored + len(writing.ids),
                            source=item.doc.source,
                        )
                        if item.start + len(item.vectors) < len(item.doc.chunks):
                            continue
                        result = self._commit(collection, writing)
                        writing = None
                    else:
                        result = item
                        if writing is not None:  # it failed after batches of it were stored
                            self._settle(self.registry.document(collection, id=writing.doc.id))
                            writing = None
                    files += 1
                    stored += result.chunks if result.outcome in ("added", "replaced") else 0
                    yield result
                    yield proto.Progress(
                        files_done=files,
                        files_total=len(sources),
                        chunks_done=stored,
                        source=result.source,
                    )
            finally:
                if writing is not None:  # failed or closed early: take its pending chunks out
                    self._settle(self.registry.document(collection, id=writing.doc.id))

    def compatible(self, collection: str) -> None:
        """InvalidInput if `collection` holds vectors of another embedder than this one."""
        row = self.registry.collection(collection)
        if row and row.model != self.embedder.model:
            raise InvalidInput(
                f"collection {collection!r} was embedded with {row.model},"
                f" not {self.embedder.model}"
            )

    def _embedded(
        self, collection: str, sources: list[Source]
    ) -> Iterator[_Batch | proto.FileResult]:
        """Each source's embedded batches, or its FileResult when it is unchanged or fails
        (the ingest's thread ahead)."""
        for source in sources:
            try:
                doc = self._prepare(collection, source)
                if isinstance(doc, proto.FileResult):
                    yield doc
                    continue
                for start in range(0, len(doc.chunks), self._batch):
                    texts = [c.embedding_text() for c in doc.chunks[start : start + self._batch]]
                    yield _Batch(doc=doc, start=start, vectors=self.embedder.embed(texts).vectors)
            except (RagError, OSError) as exc:
                log.warning("rag.file_failed", source=source.name, error=str(exc))
                yield proto.FileResult(source=source.name, outcome="failed", error=str(exc))

    def _prepare(self, collection: str, source: Source) -> _Doc | proto.FileResult:
        """A source read and chunked, or its FileResult if its content is what is stored."""
        content = source.read()
        media = media_type_of(source.name, source.media_type)
        digest = hashlib.sha256(content).hexdigest()
        doc_id = document_id(collection, source.name)
        old = self.registry.document(collection, id=doc_id)
        if old and old.status == "ready" and old.content_hash == digest:
            return proto.FileResult(
                source=source.name,
                outcome="unchanged",
                document_id=doc_id,
                chunks=len(old.chunk_ids),
            )
        chunks = chunk_blocks(
            load(source.name, content, media),
            self.embedder.count_tokens,
            max_tokens=self._chunk_tokens,
            overlap=self._overlap,
        )
        if not chunks:
            raise UnsupportedDocument(f"{source.name}: no text found")
        return _Doc(
            source=source.name,
            id=doc_id,
            media=media,
            digest=digest,
            chunks=chunks,
            replacing=bool(old and old.generation),
        )

    def _begin(self, collection: str, doc: _Doc, metadata: dict[str, str]) -> _Writing:
        """The registry told a new generation of `doc` is in flight (before any chunk of it
        is stored: what recover() reads after a crash)."""
        self.ensure_collection(collection)
        generation = self.registry.begin_ingest(
            doc.id, collection, doc.source, doc.media, doc.digest, len(doc.chunks)
        )
        base = {"document_id": doc.id, "source": doc.source, "media_type": doc.media}
        base |= {"generation": generation, "state": "pending", "metadata": metadata}
        return _Writing(doc=doc, generation=generation, base=base)

    def _write(self, collection: str, writing: _Writing, batch: _Batch) -> None:
        """A batch's chunks stored `pending`."""
        doc, generation = writing.doc, writing.generation
        chunks = doc.chunks[batch.start : batch.start + len(batch.vectors)]
        stored = [
            StoredChunk(
                id=str(uuid.uuid5(IDS, f"{doc.id}/{generation}/{c.index}")),
                vector=vector.tolist(),
                text=c.text,
                payload=writing.base
                | {"chunk": c.index, "text": c.text, "section": c.section, "page": c.page},
            )
            for c, vector in zip(chunks, batch.vectors, strict=True)
        ]
        self.store.upsert(collection, stored)
        writing.ids += [s.id for s in stored]

    def _commit(self, collection: str, writing: _Writing) -> proto.FileResult:
        """The document's new generation live and every other one gone, in one swap."""
        doc = writing.doc
        with self._swap:
            self.store.set_payload(
                collection,
                {"document_id": doc.id, "generation": writing.generation},
                {"state": "live"},
            )
            self.store.delete(
                collection, {"document_id": doc.id}, {"generation": writing.generation}
            )
            self.registry.commit_ingest(doc.id, writing.ids)
        outcome = "replaced" if doc.replacing else "added"
        log.info(
            "rag.document_ingested", source=doc.source, chunks=len(writing.ids), outcome=outcome
        )
        return proto.FileResult(
            source=doc.source, outcome=outcome, document_id=doc.id, chunks=len(writing.ids)
        )

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
