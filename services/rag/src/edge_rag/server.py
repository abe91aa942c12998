"""The rag service on NATS: embed, search, delete and collections answered at once (in a
thread, beside a running ingest), ingests run on the worker runtime (one at a time,
progress events, keepalives, cancel, watchdog, drain). RagError -> micro error, here only."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import structlog
from edge_common import wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import rag as proto
from edge_common.worker import Outcome, Worker
from nats.aio.client import Client
from nats.micro.request import Request, ServiceError
from prometheus_client import Counter

from edge_rag.errors import InvalidInput, RagError
from edge_rag.library import Library, Source, Step, sources_under

log = structlog.get_logger(__name__)
INGESTS = Counter("edge_rag_ingests", "Ingests ended", ["outcome"])
CHUNKS = Counter("edge_rag_chunks_ingested", "Chunks embedded and stored by ingests")


class _CpuTurn:
    """The NPU lease's stand-in for an embedder on the CPU: the worker runtime takes a lease
    for every job, and a CPU ingest must not keep vision or the LLM off the NPU."""

    class _Held:
        key = "cpu"
        lost = asyncio.Event()  # never set: nobody takes the CPU away

    @contextlib.asynccontextmanager
    async def hold(self, model: str) -> AsyncIterator[Any]:
        yield self._Held()


class IngestJob:
    """One ingest request, a job of edge_common.worker."""

    final = proto.Ingested

    def __init__(self, library: Library, request: proto.IngestRequest, sources: list[Source]):
        self._library, self._sources = library, sources
        self.collection, self.metadata = request.collection, request.metadata
        self.request_id, self.stream_to = request.request_id, request.stream_to
        self.model = library.embedder.model
        self.progress_at = time.monotonic()
        self.chunks = 0
        self.outcome: Outcome | None = None
        self.stopped_by: str | None = None

    def summary(self) -> dict[str, object]:
        return {"collection": self.collection, "files": len(self._sources), "chunks": self.chunks}

    def last_progress(self) -> float:
        return self.progress_at

    async def events(self) -> AsyncIterator[proto.Progress | proto.Ingested]:
        started = self.progress_at = time.monotonic()
        results: list[proto.FileResult] = []
        steps = self._library.ingest(self.collection, self._sources, metadata=self.metadata)
        while (step := await _step(steps)) is not None:
            self.progress_at = time.monotonic()
            if isinstance(step, proto.Progress):
                yield step
                continue
            results.append(step)
            if step.outcome in ("added", "replaced"):
                self.chunks += step.chunks
                CHUNKS.inc(step.chunks)
        await asyncio.to_thread(self._library.optimize, self.collection)
        seconds = round(time.monotonic() - started, 3)
        yield proto.Ingested(
            collection=self.collection, files=results, chunks=self.chunks, seconds=seconds
        )


async def _step(steps: Iterator[Step]) -> Step | None:
    """The ingest's next step (None: it ended) in a thread; on cancel, the batch in hand
    finishes and the ingest is closed (which takes its pending chunks back out)."""

    def advance() -> Step | None:
        return next(steps, None)

    task = asyncio.ensure_future(asyncio.to_thread(advance))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        await asyncio.to_thread(steps.close)
        raise


class RagServer:
    def __init__(
        self,
        nc: Client,
        library: Library,
        lease: NpuLease | None,
        *,
        stall_s: float,
        abort_grace_s: float,
    ) -> None:
        self.library = library
        self._lease = lease  # None: the embedder runs on the CPU
        self.worker = Worker(
            nc,
            lease or cast(NpuLease, _CpuTurn()),
            service=proto.SERVICE,
            noun="ingest",
            stall_s=stall_s,
            abort_grace_s=abort_grace_s,
            prepare=_nothing,
            ended=self._ended,  # type: ignore[arg-type]
        )

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn` in a thread, with the NPU lease when the embedder is on the NPU; a RagError
        becomes the micro error the caller sees."""
        with _told():
            if self._lease is None:
                return await asyncio.to_thread(fn, *args)
            async with self._lease.hold(self.library.embedder.model):
                return await asyncio.to_thread(fn, *args)

    async def on_embed(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_embed, "embed")
        embedder = self.library.embedder
        if request.model != embedder.model:
            raise ServiceError("model_not_found", f"The model `{request.model}` does not exist.")
        texts = request.input or await self._run(embedder.texts_of, request.tokens)
        out = await self._run(lambda: embedder.embed(texts, truncate=request.truncate))
        reply = proto.Embedded(
            model=embedder.model,
            dimension=embedder.dimension,
            data=out.vectors.astype("<f4").tobytes(),
            tokens=out.tokens,
            truncated=out.truncated,
        )
        await req.respond(wire.encode(reply))

    async def on_search(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_search, "search")
        await req.respond(wire.encode(await self._run(self.library.search, request)))

    async def on_delete(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_delete, "delete")
        # between ingests: a delete must not race the commit of the same document
        async with self.worker.turn:
            deleted = await self._run(self.library.delete, request)
        await req.respond(wire.encode(deleted))

    async def on_collections(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_collections_request, "collections")
        await req.respond(wire.encode(await self._run(self.library.listing, request)))

    async def on_ingest(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_ingest, "ingest")
        if request.paths:
            raise ServiceError("invalid_request", "paths are taken on rag.ingest_paths only")
        sources = [Source.of(f.name, f.content, f.media_type) for f in request.files]
        await self._accept(req, request, sources)

    async def on_ingest_paths(self, req: Request) -> None:
        request = self.worker.take(req, proto.decode_ingest, "ingest")
        with _told():
            if any(not Path(p).is_absolute() for p in request.paths):
                raise InvalidInput("paths must be absolute")
            sources = await asyncio.to_thread(sources_under, [Path(p) for p in request.paths])
        sources += [Source.of(f.name, f.content, f.media_type) for f in request.files]
        await self._accept(req, request, sources)

    async def _accept(
        self, req: Request, request: proto.IngestRequest, sources: list[Source]
    ) -> None:
        if not sources:
            raise ServiceError("invalid_request", "nothing to ingest: no files given or found")
        with _told():  # refused now, not as every file's failure
            self.library.compatible(request.collection)
        self.worker.accepted(IngestJob(self.library, request, sources))
        accepted = wire.Accepted(prompt_tokens=0, instance=self.worker.instance)
        await req.respond(wire.encode(accepted))

    def micro_stats(self, _: object) -> object:
        """Each endpoint's STATS `data` (asked every discovery round: no I/O here)."""
        embedder = self.library.embedder
        stats = proto.RagStats(
            model=embedder.model,
            dimension=embedder.dimension,
            max_tokens=embedder.max_tokens,
            device=embedder.device,
            ingesting=self.worker.current is not None,
            queued=self.worker.queued,
        )
        return msgspec.to_builtins(stats)

    def _ended(self, job: IngestJob, outcome: Outcome) -> None:
        INGESTS.labels(outcome).inc()
        log.info("rag.ingest_ended", outcome=outcome, **job.summary())


@contextlib.contextmanager
def _told() -> Iterator[None]:
    """A RagError raised inside becomes the micro error the caller sees."""
    try:
        yield
    except RagError as exc:
        raise ServiceError(exc.code, exc.message) from None


async def _nothing(_: IngestJob) -> None:
    """The embedder stays loaded: nothing to switch in a job's turn."""
