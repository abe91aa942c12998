"""The rag worker process: the embedder, the store and the registry opened once (crash
leftovers recovered first), the NATS service, /health over HTTP.

One process at a time owns a data dir: `library_of` holds `<data_dir>/lock` (flock) while
the library is open, for the service and the `edge-ai rag` CLI's in-process fallback alike
(two writers would each recover the other's in-flight documents and fight over the store).
"""

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from edge_common import bus
from edge_common.metrics import metrics
from edge_common.protocol import rag as proto
from edge_common.worker import npu_lease
from litestar import Litestar, get
from litestar.datastructures import State

from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder
from edge_rag.errors import RagError
from edge_rag.library import Library
from edge_rag.registry import Registry
from edge_rag.server import RagServer
from edge_rag.settings import RagSettings
from edge_rag.store import open_store

VERSION = "0.1.0"


@get("/health", sync_to_thread=False)
def health(state: State) -> dict[str, Any]:
    server: RagServer = state.server
    embedder = server.library.embedder
    return {
        "status": "ok",
        "model": embedder.model,
        "dimension": embedder.dimension,
        "device": embedder.device,
        "ingesting": server.worker.current is not None,
        "queued": server.worker.queued,
    }


class DataDirInUse(RagError):
    """Another process (the rag service, or the CLI working in-process) has the data dir."""

    code = "unavailable"


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir`/lock (made if missing) for the block; DataDirInUse at once if another
    process holds it. The kernel drops a flock with its holder, so a killed process leaves
    no stale lock; the holder's pid is written there for the message."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise DataDirInUse(
                f"{data_dir} is in use by another process (pid {holder}): the rag service or"
                " an `edge-ai rag` command working on it in-process"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield  # closing the file releases the lock


@contextmanager
def library_of(settings: RagSettings) -> Iterator[Library]:
    """The Library of `settings`, its data dir locked for as long as it is open."""
    with data_dir_lock(Path(settings.data_dir).absolute()):
        library = open_library(settings)
        try:
            yield library
        finally:
            close_library(library)


def open_library(settings: RagSettings) -> Library:
    """The embedder, store and registry `settings` name, crash leftovers settled."""
    data_dir = Path(settings.data_dir)
    spec = settings.embedder or default_embedder()
    embedder = Embedder(spec, create_backend(spec))
    library = Library(
        embedder,
        open_store(settings.store, data_dir),
        Registry(data_dir / "registry.sqlite3"),
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.overlap_tokens,
        batch=settings.ingest_batch,
    )
    library.recover()
    return library


def close_library(library: Library) -> None:
    library.store.close()
    library.registry.close()
    library.embedder.close()


def create_app(settings: RagSettings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            library = await asyncio.to_thread(stack.enter_context, library_of(settings))
            nc = await stack.enter_async_context(
                bus.connect(settings.nats_url, proto.SERVICE, settings.nats_password)
            )
            lease = None
            if library.embedder.device == "npu":  # CPU embedding leaves the NPU to others
                lease = await npu_lease(nc, settings, proto.SERVICE)
                stack.push_async_callback(lease.stop)
            server = RagServer(
                nc,
                library,
                lease,
                stall_s=settings.stall_s,
                abort_grace_s=settings.abort_grace_s,
            )
            await server.worker.start(stack, grace_s=settings.shutdown_grace_s)
            endpoints = {
                proto.embed_subject(library.embedder.model): server.on_embed,
                proto.SEARCH_SUBJECT: server.on_search,
                proto.INGEST_SUBJECT: server.on_ingest,
                proto.INGEST_PATHS_SUBJECT: server.on_ingest_paths,
                proto.DELETE_SUBJECT: server.on_delete,
                proto.COLLECTIONS_SUBJECT: server.on_collections,
            }
            await stack.enter_async_context(
                bus.serve(
                    nc,
                    name=proto.SERVICE,
                    version=VERSION,
                    description="Embeddings, document ingest and search",
                    endpoints=endpoints,
                    metadata={
                        "models": library.embedder.model,
                        "dimension": str(library.embedder.dimension),
                    },
                    stats=server.micro_stats,
                )
            )
            app.state.update(server=server)
            yield

    return Litestar([health, metrics], lifespan=[lifespan], logging_config=None)
