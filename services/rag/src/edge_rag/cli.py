"""`edge-ai rag`: ingest files into a collection, search it, list and delete, from a shell.

It talks to the running rag service over NATS as the `ops` user, the only one allowed on
`rag.ingest_paths` (the service reads the files from this machine's disk), with the password
`edge-ai up` wrote to `<run-dir>/nats-ops-password` (or EDGE_OPS_NATS_PASSWORD). When no
rag service answers (no password, no bus, or no service on it), it opens the library
itself, in-process, on the data dir `edge-ai up` gives the service (`<run-dir>/rag`),
under that dir's lock (edge_rag.app.library_of): never beside a service that has it.

Exit codes: 0 done, 1 some files failed (listed), 2 usage or connection errors,
130 interrupted (Ctrl-C: an ingest is cancelled, the file in progress rolled back).
"""

import argparse
import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
import nats
from edge_common import wire
from edge_common.bus import credentials
from edge_common.protocol import rag as proto
from nats.aio.client import Client
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edge_rag.errors import RagError
from edge_rag.loaders import source_of

if TYPE_CHECKING:
    from edge_rag.library import Library

# The embedder, the store and the service (edge_rag.app, .library, .server) are imported
# where used: `edge-ai up` builds this parser too and should not load them.

T = TypeVar("T")
IngestEvent = proto.Progress | proto.Ingested
REQUEST_TIMEOUT_S = 60.0
"""A reply's deadline: a delete waits for the ingest under way (the worker's turn)."""
SILENT_AFTER_CANCEL_S = 2.5 * wire.ALIVE_INTERVAL_S
"""A cancelled ingest has ended (its rollback done) once its worker sends no keepalive for
this long: the worker sends one a second for as long as it holds the job."""
INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
COLLECTION = re.compile(proto.CollectionName.__metadata__[0].pattern)  # type: ignore[attr-defined]
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


class CliError(Exception):
    """A usage or connection error: printed, exit code 2."""


class Rag(Protocol):
    """The rag service's operations, over the bus or in-process."""

    def ingest(self, request: proto.IngestRequest) -> AsyncIterator[IngestEvent]:
        """The job's Progress events, then its Ingested. Cancelled (Ctrl-C), the job is
        stopped and its file in progress rolled back before the CancelledError goes on."""
        ...

    async def search(self, request: proto.SearchRequest) -> proto.SearchResult: ...

    async def delete(self, request: proto.DeleteRequest) -> proto.Deleted: ...

    async def collections(self, request: proto.CollectionsRequest) -> proto.Collections: ...


class BusRag:
    """The running service, as the `ops` user."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def _call(self, subject: str, request: wire.Wire, decode: Callable[[bytes], T]) -> T:
        try:
            reply = await self._nc.request(subject, wire.encode(request), REQUEST_TIMEOUT_S)
        except NoRespondersError:
            raise CliError("the rag service left the bus") from None
        except NatsTimeout:
            raise CliError(f"the rag service did not answer in {REQUEST_TIMEOUT_S:g} s") from None
        if reply.headers and ERROR_CODE_HEADER in reply.headers:
            raise CliError(reply.headers.get(ERROR_HEADER) or reply.headers[ERROR_CODE_HEADER])
        return decode(reply.data)

    async def search(self, request: proto.SearchRequest) -> proto.SearchResult:
        return await self._call(proto.SEARCH_SUBJECT, request, proto.decode_search_result)

    async def delete(self, request: proto.DeleteRequest) -> proto.Deleted:
        return await self._call(proto.DELETE_SUBJECT, request, proto.decode_deleted)

    async def collections(self, request: proto.CollectionsRequest) -> proto.Collections:
        return await self._call(proto.COLLECTIONS_SUBJECT, request, proto.decode_collections)

    async def ingest(self, request: proto.IngestRequest) -> AsyncIterator[IngestEvent]:
        """Keepalives answered; cancelled, it tells the worker and waits for the job to end."""
        sub = await self._nc.subscribe(self._nc.new_inbox())
        try:
            request = msgspec.structs.replace(request, stream_to=sub.subject)
            accepted = await self._call(proto.INGEST_PATHS_SUBJECT, request, wire.decode_accepted)
            try:
                while True:
                    event = await self._next(sub, accepted.instance)
                    if isinstance(event, wire.Failed):
                        raise CliError(f"the ingest failed: {event.message}")
                    yield event
                    if isinstance(event, proto.Ingested):
                        return
            except asyncio.CancelledError:
                cancel = wire.Cancel(request_id=request.request_id)
                await self._nc.publish(
                    wire.cancel_subject(proto.SERVICE, request.request_id), wire.encode(cancel)
                )
                await self._ended(sub)
                raise
        finally:
            await sub.unsubscribe()

    async def _next(self, sub: Any, instance: str) -> IngestEvent | wire.Failed:
        """The job's next event but keepalives (answered); CliError if its worker is gone."""
        while True:
            try:
                msg = await sub.next_msg(timeout=3 * wire.ALIVE_INTERVAL_S)
            except NatsTimeout:
                try:  # NATS tells at once whether the worker is still connected
                    alive = wire.alive_subject(proto.SERVICE, instance)
                    await self._nc.request(alive, b"", timeout=2 * wire.ALIVE_INTERVAL_S)
                except (NoRespondersError, NatsTimeout):
                    raise CliError(
                        "the rag service went away during the ingest: run it again to finish"
                    ) from None
                continue
            event = proto.decode_ingest_event(msg.data)
            if not isinstance(event, wire.Alive):
                return event
            await msg.respond(b"")  # we still listen

    async def _ended(self, sub: Any) -> None:
        """Until the cancelled job's keepalives stop (or its end arrives, if the cancel came
        too late)."""
        while True:
            try:
                msg = await sub.next_msg(timeout=SILENT_AFTER_CANCEL_S)
            except NatsTimeout:
                return
            event = proto.decode_ingest_event(msg.data)
            if not isinstance(event, wire.Alive):
                if not isinstance(event, proto.Progress):
                    return
                continue
            await msg.respond(b"")


class LocalRag:
    """The library in this process (the data dir locked), on threads."""

    def __init__(self, library: "Library") -> None:
        self._library = library

    async def search(self, request: proto.SearchRequest) -> proto.SearchResult:
        return await self._run(self._library.search, request)

    async def delete(self, request: proto.DeleteRequest) -> proto.Deleted:
        return await self._run(self._library.delete, request)

    async def collections(self, request: proto.CollectionsRequest) -> proto.Collections:
        return await self._run(self._library.listing, request)

    async def _run(self, fn: Callable[[Any], T], request: Any) -> T:
        try:
            return await asyncio.to_thread(fn, request)
        except RagError as exc:
            raise CliError(exc.message) from None

    async def ingest(self, request: proto.IngestRequest) -> AsyncIterator[IngestEvent]:
        """The service's own ingest job, run here (cancelled, it rolls back itself)."""
        from edge_rag.library import sources_under
        from edge_rag.server import IngestJob

        await self._run(self._library.compatible, request.collection)
        sources = await self._run(sources_under, [Path(p) for p in request.paths])
        if not sources:
            raise CliError("nothing to ingest: no files given or found")
        async for event in IngestJob(self._library, request, sources).events():
            yield event


def ops_password(run_dir: Path) -> str | None:
    """EDGE_OPS_NATS_PASSWORD, else what `edge-ai up` wrote in the run dir; None: no stack
    ever ran there."""
    if password := os.environ.get("EDGE_OPS_NATS_PASSWORD"):
        return password
    try:
        return (run_dir / "nats-ops-password").read_text().strip()
    except FileNotFoundError:
        return None


async def _bus(url: str, password: str) -> Client | None:
    """The bus as `ops`, if a rag service is on it; None if there is no bus or no service."""

    async def quiet(_: Exception) -> None:
        """nats-py logs every failed attempt with a traceback: the caller reports instead."""

    try:
        nc = await nats.connect(
            url,
            **credentials("ops", password),
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=quiet,
        )
    except (NoServersError, OSError, TimeoutError):
        return None
    except nats.errors.Error as exc:
        raise CliError(f"NATS at {url} refused user ops ({exc}): wrong password?") from None
    try:
        await nc.request(f"$SRV.PING.{proto.SERVICE}", b"", timeout=2)
    except (NoRespondersError, NatsTimeout):
        await nc.close()
        return None
    return nc


@contextlib.asynccontextmanager
async def open_rag(args: argparse.Namespace) -> AsyncIterator[Rag]:
    """The running service, else the library in-process (see the module docstring)."""
    run_dir = Path(args.run_dir)
    password = ops_password(run_dir)
    nc = await _bus(args.nats_url, password) if password is not None else None
    if nc is not None:
        try:
            yield BusRag(nc)
        finally:
            await nc.close()
        return
    from edge_common.logs import configure_logging
    from edge_common.settings import SettingsError, load_settings

    from edge_rag.app import library_of
    from edge_rag.settings import RagSettings

    data_dir = (run_dir / "rag").absolute()
    why = f"no rag service on {args.nats_url}" if password else f"no stack ever ran in {run_dir}"
    err.print(f"{why}: working in-process on {data_dir}", markup=False)
    configure_logging("edge-ai-rag", "warning")  # its warnings (a file failing) as JSON
    try:
        settings = load_settings(RagSettings, proto.SERVICE)
        settings = msgspec.structs.replace(settings, data_dir=str(data_dir))
        with library_of(settings) as library:
            yield LocalRag(library)
    except (SettingsError, RagError) as exc:
        raise CliError(str(exc)) from None


def _request_id() -> str:
    return uuid.uuid4().hex


async def ingest(rag: Rag, args: argparse.Namespace) -> int:
    request = proto.IngestRequest(
        request_id=_request_id(),
        collection=args.collection,
        paths=args.paths,
        metadata=dict(args.metadata),
    )
    progress = Progress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[source]}"),
        console=err,
    )
    files = progress.add_task("files", total=None, source="")
    chunks = progress.add_task("chunks", total=None, source="")
    plain = not err.is_terminal  # no live bar into a file or pipe: a line per file instead
    files_done, ingested = 0, None
    try:
        with progress:
            async with contextlib.aclosing(rag.ingest(request)) as events:
                async for event in events:
                    if isinstance(event, proto.Ingested):
                        ingested = event
                        break
                    progress.update(files, total=event.files_total, completed=event.files_done)
                    progress.update(chunks, completed=event.chunks_done, source=event.source)
                    if plain and event.files_done > files_done:
                        files_done = event.files_done
                        err.print(
                            f"{files_done}/{event.files_total} files, {event.chunks_done}"
                            f" chunks: {event.source}",
                            markup=False,
                        )
    except asyncio.CancelledError:
        err.print("cancelled: files done before are kept, the one in progress was rolled back")
        raise
    if ingested is None:
        raise CliError("the ingest ended without its result")
    return _report(ingested)


def _report(ingested: proto.Ingested) -> int:
    """Each file's outcome; 1 if any failed."""
    counts = {o: 0 for o in ("added", "replaced", "unchanged", "failed")}
    for f in ingested.files:
        counts[f.outcome] += 1
        detail = f": {f.error}" if f.error else f" ({f.chunks} chunks)"
        out.print(f"{f.outcome:<9} {f.source}{detail}", markup=False)
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
    out.print(
        f"{ingested.collection}: {len(ingested.files)} files ({summary}),"
        f" {ingested.chunks} chunks written in {ingested.seconds:g} s",
        markup=False,
    )
    if counts["failed"]:
        err.print(f"{counts['failed']} files failed (listed above)")
        return 1
    return 0


async def search(rag: Rag, args: argparse.Namespace) -> int:
    request = proto.SearchRequest(
        request_id=_request_id(),
        collection=args.collection,
        query=args.query,
        top_k=args.top_k,
        mode=args.mode,
    )
    result = await rag.search(request)
    if args.json:
        out.out(msgspec.json.encode(result).decode())
        return 0
    for rank, hit in enumerate(result.hits, 1):
        where = f"chunk {hit.chunk}" + (f", page {hit.page}" if hit.page else "")
        section = f"  [{hit.section}]" if hit.section else ""
        out.print(f"{rank}. {hit.score:.3f}  {hit.source} ({where}){section}", markup=False)
        text = " ".join(hit.text.split())
        out.print(f"   {text[:300]}{'…' if len(text) > 300 else ''}", markup=False)
    if not result.hits:
        out.print("no hits")
    return 0


async def collections(rag: Rag, args: argparse.Namespace) -> int:
    request = proto.CollectionsRequest(request_id=_request_id(), documents_of=args.documents)
    listing = await rag.collections(request)
    if args.json:
        out.out(msgspec.json.encode(listing).decode())
        return 0
    for c in listing.collections:
        out.print(
            f"{c.name}: {c.documents} documents, {c.chunks} chunks ({c.model}, {c.dimension} d)",
            markup=False,
        )
    for d in listing.documents:
        out.print(f"  {d.status:<9} {d.chunks:>5} chunks  {d.source}  {d.id}", markup=False)
    if not listing.collections:
        out.print("no collections")
    return 0


async def delete(rag: Rag, args: argparse.Namespace) -> int:
    request = proto.DeleteRequest(
        request_id=_request_id(),
        collection=args.collection,
        document_id=args.document or "",
        source=args.source or "",
    )
    deleted = await rag.delete(request)
    what = "the document" if args.document or args.source else "the collection"
    out.print(
        f"deleted {what}: {deleted.documents} documents, {deleted.chunks} chunks"
        f" from {args.collection}",
        markup=False,
    )
    return 0


async def _main(args: argparse.Namespace) -> int:
    main_task = asyncio.current_task()
    assert main_task is not None
    # Ctrl-C cancels the command, which an ingest turns into a clean cancel of its job
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, main_task.cancel)
    async with open_rag(args) as rag:
        return await args.command(rag, args)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except CliError as exc:
        err.print(f"edge-ai rag: {exc}", markup=False)
        return 2
    except (asyncio.CancelledError, KeyboardInterrupt):
        return INTERRUPTED


def _collection(text: str) -> str:
    if not COLLECTION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: letters, digits, _ and -, at most 64, a letter or digit first"
        )
    return text


def _absolute(path: str) -> str:
    """A path as the service reads it (from its own working directory)."""
    return str(Path(path).absolute())


def _source(text: str) -> str:
    """A document's source: a path on this disk absolute, as ingest named it; else as
    given (an upload's name); bytes that are not UTF-8 escaped as ingest wrote them."""
    return source_of(Path(text).absolute() if Path(text).exists() else text)


def _top_k(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= proto.MAX_TOP_K):
        raise argparse.ArgumentTypeError(f"{text!r}: a number from 1 to {proto.MAX_TOP_K}")
    return int(text)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def add_rag_commands(commands: Any) -> None:
    """`edge-ai rag ...` on edge-ai's subcommands (edge_common.cli)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", default=".run", help="the run dir of `edge-ai up`")
    common.add_argument(
        "--nats-url",
        default=os.environ.get("EDGE_NATS_URL", "nats://127.0.0.1:4222"),
        help="the bus of `edge-ai up` (its --nats-port)",
    )
    rag = commands.add_parser("rag", help="ingest documents into RAG collections, search them")
    verbs = rag.add_subparsers(dest="rag_command", required=True)
    p = verbs.add_parser("ingest", parents=[common], help="ingest files and folders")
    p.add_argument(
        "paths", nargs="+", type=_absolute, metavar="PATH", help="files, or folders to walk"
    )
    p.add_argument("--collection", required=True, type=_collection)
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        type=_pair,
        metavar="KEY=VALUE",
        help="stored with every chunk, filterable as metadata.KEY (repeatable)",
    )
    p.set_defaults(func=run, command=ingest)
    p = verbs.add_parser("search", parents=[common], help="the chunks closest to a query")
    p.add_argument("query")
    p.add_argument("--collection", required=True, type=_collection)
    p.add_argument("--top-k", type=_top_k, default=5, help=f"1 to {proto.MAX_TOP_K}")
    p.add_argument("--mode", choices=["dense", "hybrid"], default="dense")
    p.add_argument("--json", action="store_true", help="print the SearchResult as JSON")
    p.set_defaults(func=run, command=search)
    p = verbs.add_parser("collections", parents=[common], help="list collections")
    p.add_argument("--documents", default="", metavar="NAME", help="also list its documents")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=run, command=collections)
    p = verbs.add_parser(
        "delete", parents=[common], help="delete a document, or a whole collection"
    )
    p.add_argument("--collection", required=True, type=_collection)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--document", metavar="ID", help="the document's id")
    which.add_argument(
        "--source", type=_source, metavar="PATH", help="the document's path or upload name"
    )
    p.set_defaults(func=run, command=delete)
