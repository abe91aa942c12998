"""The RAG surface: OpenAI's `/v1/embeddings`, and `/v1/rag/*` (search, ingest, collections),
by the rag workers over NATS (edge_common.protocol.rag); grounding for chat is grounding.py's.

Embeddings are OpenAI-exact: `input` a string, a list of strings, or token arrays (ids of the
embedder's own tokenizer, not OpenAI's), `encoding_format` float or base64 (little-endian
float32, as OpenAI sends it), `dimensions` only the model's own, `usage`. The worker answers
vectors as float32 bytes; they are sliced per input here, never re-encoded as floats when
base64 is asked.
"""

import array
import base64
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

import msgspec
from edge_common.protocol import rag as proto
from litestar import HttpMethod, Request, Response, delete, get, post, route
from litestar.datastructures import UploadFile
from litestar.response import Stream
from msgspec import Meta
from nats.aio.client import Client

from edge_router.auth import key_of
from edge_router.bus_client import BusClient
from edge_router.errors import (
    ERROR_RESPONSES,
    ApiError,
    InvalidRequest,
    NotFound,
    Unavailable,
    decoded,
    invalid_body,
    model_not_found,
    unavailable,
)
from edge_router.gone import unless_gone
from edge_router.local_state import LocalCatalog
from edge_router.request_id import request_id_of

LOCAL_ONLY_KEY = "edge_local_only"
"""Metadata the router stores with the chunks of documents a local-only key ingested: a
grounded chat that uses one of them stays local (grounding.py)."""
ALIASES = ("auto", "local")
"""Model names that mean the default embedder."""
DISCOVERY_WINDOW_S = 0.25


class EmbeddingsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Any
    """A string, a list of strings, a list of token ids, or a list of such lists."""
    model: Annotated[str, Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class SearchBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    collection: proto.CollectionName
    query: Annotated[str, Meta(min_length=1, max_length=20_000)]
    top_k: Annotated[int, Meta(ge=1, le=proto.MAX_TOP_K)] = 5
    filter: dict[str, proto.FilterValue] = msgspec.field(default_factory=dict)
    mode: proto.SearchMode = "dense"
    score_threshold: float | None = None


class SearchAnswer(msgspec.Struct, kw_only=True):
    object: Literal["rag.search"] = "rag.search"
    model: str
    hits: list[proto.Hit]
    query_tokens: int
    embed_ms: float
    search_ms: float


class IngestFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The form fields of an ingest upload beside its `file` parts."""

    collection: proto.CollectionName
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    """JSON object, stored with every chunk."""
    stream: bool = False
    """Server-sent progress events, then the result (also with `Accept: text/event-stream`)."""


class RagStatsReply(msgspec.Struct):
    """The part of a rag worker's micro STATS we read."""

    endpoints: list["EndpointStats"] = []


class EndpointStats(msgspec.Struct):
    data: proto.RagStats | None = None


def _too_large() -> ApiError:
    return InvalidRequest(
        "The request is too large for the bus: send fewer or smaller files.",
        code="request_too_large",
    )


class RagClient:
    def __init__(
        self, nc: Client, *, accept_timeout: float, idle_timeout: float, call_timeout: float
    ) -> None:
        self._bus: BusClient[proto.Progress | proto.Ingested] = BusClient(
            nc,
            proto.SERVICE,
            decode=proto.decode_ingest_event,
            final=(proto.Ingested,),
            too_large=_too_large,
            accept_timeout=accept_timeout,
            idle_timeout=idle_timeout,
        )
        self._call_timeout = call_timeout

    async def aclose(self) -> None:
        await self._bus.aclose()

    async def embedders(self, window: float = DISCOVERY_WINDOW_S) -> dict[str, proto.RagStats]:
        """The embedders the running rag workers serve, from their micro STATS."""
        found: dict[str, proto.RagStats] = {}
        async for reply in self._bus.stats(window):
            try:
                stats = msgspec.json.decode(reply, type=RagStatsReply)
            except msgspec.DecodeError:
                continue
            for endpoint in stats.endpoints:
                if endpoint.data and endpoint.data.model:
                    found.setdefault(endpoint.data.model, endpoint.data)
        return found

    async def embed(self, request: proto.EmbedRequest) -> proto.Embedded:
        try:
            return await self._call(
                proto.embed_subject(request.model), request, proto.decode_embedded, request.model
            )
        except Unavailable:
            served = await self.embedders()
            if served and request.model not in served:  # workers are up, not with that one
                raise model_not_found(request.model) from None
            raise

    async def search(self, request: proto.SearchRequest) -> proto.SearchResult:
        return await self._call(proto.SEARCH_SUBJECT, request, proto.decode_search_result, "search")

    async def collections(self, request: proto.CollectionsRequest) -> proto.Collections:
        return await self._call(
            proto.COLLECTIONS_SUBJECT, request, proto.decode_collections, "collections"
        )

    async def delete(self, request: proto.DeleteRequest) -> proto.Deleted:
        return await self._call(proto.DELETE_SUBJECT, request, proto.decode_deleted, "delete")

    async def ingest(
        self, request: proto.IngestRequest
    ) -> AsyncIterator[proto.Progress | proto.Ingested]:
        return await self._bus.stream(proto.INGEST_SUBJECT, request, serving="ingest")

    async def _call(self, subject: str, request: Any, decode: Any, serving: str) -> Any:
        return await self._bus.call(
            subject, request, decode, serving=serving, within_s=self._call_timeout
        )


def _inputs(value: Any) -> tuple[list[str], list[list[int]]]:
    """`input` as texts or as token arrays (exactly one of them non-empty), checked."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad_input("`input` must be a non-empty string, list of strings or token arrays.")
    if len(value) > proto.MAX_EMBED_INPUTS:
        raise _bad_input(f"At most {proto.MAX_EMBED_INPUTS} inputs per request.")
    if all(isinstance(v, str) for v in value):
        if not all(value):
            raise _bad_input("`input` must not contain empty strings.")
        return value, []
    if all(_is_token_id(v) for v in value):
        value = [value]
    if all(isinstance(v, list) and v and all(_is_token_id(t) for t in v) for v in value):
        return [], value
    raise _bad_input("`input` must be a string, a list of strings, or token arrays.")


def _is_token_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31


def _bad_input(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="input", code="invalid_value")


def _rows(embedded: proto.Embedded, encoding: str) -> list[Embedding]:
    width = embedded.dimension * 4
    rows = [embedded.data[i : i + width] for i in range(0, len(embedded.data), width)]
    if encoding == "base64":
        return [
            Embedding(embedding=base64.b64encode(r).decode(), index=i) for i, r in enumerate(rows)
        ]
    out = []
    for i, row in enumerate(rows):
        floats = array.array("f", row)
        if sys.byteorder == "big":  # the wire is little-endian
            floats.byteswap()
        out.append(Embedding(embedding=floats.tolist(), index=i))
    return out


async def embedder_named(catalog: LocalCatalog, asked: str) -> str:
    """The embedder `asked` names; an alias means the first one the rag workers serve, as the
    catalog's discovery knows them."""
    if asked not in ALIASES:
        return asked
    if not catalog.embedders:
        await catalog.settled()
    if not catalog.embedders:
        raise unavailable("No rag service is running; try again shortly.")
    return next(iter(catalog.embedders))


@post("/v1/embeddings", status_code=200, responses=ERROR_RESPONSES)
async def embeddings(
    rag: RagClient, catalog: LocalCatalog, request: Request[Any, Any, Any]
) -> Response[Any]:
    """Embeddings, as OpenAI's endpoint (scope `embeddings`)."""
    body = decoded(await request.body(), EmbeddingsBody)
    texts, tokens = _inputs(body.input)
    model = await embedder_named(catalog, body.model)
    wire_request = proto.EmbedRequest(
        request_id=request_id_of(request.scope), model=model, input=texts, tokens=tokens
    )
    embedded = await unless_gone(request, rag.embed(wire_request))
    if body.dimensions is not None and body.dimensions != embedded.dimension:
        raise InvalidRequest(
            f"Model `{embedded.model}` gives {embedded.dimension} dimensions only; "
            "leave `dimensions` out or set it to that.",
            param="dimensions",
            code="unsupported",
        )
    used = sum(embedded.tokens)
    answer = EmbeddingList(
        data=_rows(embedded, body.encoding_format),
        model=embedded.model,
        usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used),
    )
    return Response(msgspec.json.encode(answer), media_type="application/json")


@post("/v1/rag/search", status_code=200, responses=ERROR_RESPONSES)
async def search(rag: RagClient, request: Request[Any, Any, Any]) -> Response[Any]:
    """The chunks of a collection closest to a query (scope `rag:read`)."""
    body = decoded(await request.body(), SearchBody)
    wire_request = proto.SearchRequest(
        request_id=request_id_of(request.scope), **msgspec.structs.asdict(body)
    )
    answer = SearchAnswer(**msgspec.structs.asdict(await rag.search(wire_request)))
    return Response(msgspec.json.encode(answer), media_type="application/json")


async def _ingest_form(request: Request[Any, Any, Any]) -> tuple[proto.IngestRequest, bool]:
    """The upload as an IngestRequest, and whether progress is to be streamed."""
    if request.content_type[0] != "multipart/form-data":
        raise InvalidRequest(
            "Upload documents as multipart/form-data: `file` parts and a `collection` field.",
            code="invalid_content_type",
        )
    form = await request.form()
    uploads = [f for f in form.getall("file", []) if isinstance(f, UploadFile)]
    if not uploads:
        raise InvalidRequest(
            "Upload at least one document in a `file` part.", param="file", code="missing_file"
        )
    fields: dict[str, Any] = {k: v for k, v in form.items() if k != "file"}
    if "metadata" in fields:
        try:
            fields["metadata"] = msgspec.json.decode(str(fields["metadata"]))
        except msgspec.DecodeError:
            raise InvalidRequest(
                "`metadata` must be a JSON object of strings.",
                param="metadata",
                code="invalid_value",
            ) from None
    try:
        options = msgspec.convert(fields, IngestFields, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None
    files = [
        proto.UploadedFile(
            name=u.filename or "upload", content=await u.read(), media_type=u.content_type or ""
        )
        for u in uploads
    ]
    return proto.IngestRequest(
        request_id=request_id_of(request.scope),
        collection=options.collection,
        files=files,
        metadata=options.metadata,
    ), options.stream


class IngestProgress(msgspec.Struct, kw_only=True):
    object: Literal["rag.ingest.progress"] = "rag.ingest.progress"
    files_done: int
    files_total: int
    chunks_done: int
    source: str


class IngestAnswer(msgspec.Struct, kw_only=True):
    object: Literal["rag.ingest"] = "rag.ingest"
    collection: str
    files: list[proto.FileResult]
    chunks: int
    seconds: float


def _answer(done: proto.Ingested) -> IngestAnswer:
    return IngestAnswer(
        collection=done.collection, files=done.files, chunks=done.chunks, seconds=done.seconds
    )


async def _progress_events(
    events: AsyncIterator[proto.Progress | proto.Ingested],
) -> AsyncIterator[bytes]:
    """Server-sent events: progress, the result, [DONE]; a failure as a last error event."""
    try:
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, proto.Ingested):
                    yield b"data: " + msgspec.json.encode(_answer(event)) + b"\n\n"
                else:
                    progress = IngestProgress(
                        files_done=event.files_done,
                        files_total=event.files_total,
                        chunks_done=event.chunks_done,
                        source=event.source,
                    )
                    yield b"data: " + msgspec.json.encode(progress) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except ApiError as exc:  # headers are gone: the failure travels as a last event
        yield b"data: " + msgspec.json.encode(exc.body()) + b"\n\n"


@post("/v1/rag/ingest", status_code=200, responses=ERROR_RESPONSES)
async def ingest(rag: RagClient, request: Request[Any, Any, Any]) -> Response[Any]:
    """Add documents to a collection (scope `rag:write`): multipart `file` parts (txt, md,
    html, pdf) and a `collection` field; unchanged files are skipped, changed ones replaced.
    With `stream=true` (or Accept: text/event-stream), progress as server-sent events."""
    wire_request, streamed = await _ingest_form(request)
    if (key := key_of(request)) and key.local_only:  # its documents never leave the board
        wire_request.metadata[LOCAL_ONLY_KEY] = "true"
    events = await rag.ingest(wire_request)
    if streamed or "text/event-stream" in request.headers.get("accept", ""):
        return Stream(
            _progress_events(events),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    done = await unless_gone(request, _last(events))  # a client that leaves cancels it
    return Response(msgspec.json.encode(_answer(done)), media_type="application/json")


async def _last(events: AsyncIterator[proto.Progress | proto.Ingested]) -> proto.Ingested:
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, proto.Ingested):
                return event
    raise AssertionError("an ingest stream ends with Ingested or raises")


@get("/v1/rag/collections", responses=ERROR_RESPONSES)
async def list_collections(rag: RagClient, request: Request[Any, Any, Any]) -> Response[Any]:
    """The collections, with their embedder and sizes (scope `rag:read`)."""
    found = await rag.collections(proto.CollectionsRequest(request_id=request_id_of(request.scope)))
    body = {"object": "list", "data": found.collections}
    return Response(msgspec.json.encode(body), media_type="application/json")


@route(
    "/v1/rag/collections/{collection:str}",
    http_method=[HttpMethod.GET, HttpMethod.DELETE],
    status_code=200,
    responses=ERROR_RESPONSES,
)
async def collection_by_name(
    rag: RagClient, collection: str, request: Request[Any, Any, Any]
) -> Response[Any]:
    """GET: one collection and its documents (scope `rag:read`); DELETE: the collection with
    all its documents (scope `rag:write`). One handler for both: Litestar's OPTIONS lists
    only the first handler's methods of a path in `Allow`."""
    if request.method == HttpMethod.DELETE:
        return await _delete(rag, request, collection)
    found = await rag.collections(
        proto.CollectionsRequest(request_id=request_id_of(request.scope), documents_of=collection)
    )
    info = next((c for c in found.collections if c.name == collection), None)
    if info is None:
        raise _no_collection(collection)
    body = {**msgspec.to_builtins(info), "documents": found.documents}
    return Response(msgspec.json.encode(body), media_type="application/json")


@delete(
    "/v1/rag/collections/{collection:str}/documents/{document_id:str}",
    status_code=200,
    responses=ERROR_RESPONSES,
)
async def delete_document(
    rag: RagClient, collection: str, document_id: str, request: Request[Any, Any, Any]
) -> Response[Any]:
    """Delete one document and its chunks (scope `rag:write`)."""
    return await _delete(rag, request, collection, document_id)


async def _delete(
    rag: RagClient, request: Request[Any, Any, Any], collection: str, document_id: str = ""
) -> Response[Any]:
    try:
        wire_request = msgspec.convert(
            {
                "request_id": request_id_of(request.scope),
                "collection": collection,
                "document_id": document_id,
            },
            proto.DeleteRequest,
        )
    except msgspec.ValidationError:
        raise _no_collection(collection) from None
    deleted = await rag.delete(wire_request)
    body = {"object": "rag.deleted", "documents": deleted.documents, "chunks": deleted.chunks}
    return Response(msgspec.json.encode(body), media_type="application/json")


def _no_collection(name: str) -> ApiError:
    return NotFound(f"No collection `{name}`.", param="collection", code="collection_not_found")
