"""HTTP surface: OpenAI-compatible endpoints and /health. Thin: framing and status only."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
from edge_common.thermal import npu_temperature
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from edge_router import protocol as p
from edge_router.chat import ChatService
from edge_router.errors import ApiError
from edge_router.llm_client import LlmClient
from edge_router.request_id import request_id_of
from edge_router.settings import RouterSettings

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()


def _sse(obj: msgspec.Struct) -> bytes:
    return b"data: " + _json.encode(obj) + b"\n\n"


async def _sse_stream(chunks: AsyncIterator[p.ChatCompletionChunk]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except ApiError as exc:
        # headers are gone: the failure travels as a last event, as OpenAI does
        log.warning("router.stream_failed", error=exc.message, code=exc.code)
        yield _sse(exc.body())
        return
    yield b"data: [DONE]\n\n"


@post("/v1/chat/completions", status_code=200)
async def chat_completions(
    data: p.ChatCompletionRequest, chat: ChatService, request: Request[Any, Any, Any]
) -> Response[Any]:
    request_id = request_id_of(request.scope)
    if not data.stream:
        return Response(await chat.complete(data, request_id))
    chunks = await chat.stream(data, request_id)
    return Stream(
        _sse_stream(chunks),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@get("/v1/models")
async def list_models(llm: LlmClient, settings: RouterSettings) -> p.ModelList:
    cards = await llm.models(settings.discovery_window_s)
    return p.ModelList(
        data=[p.ModelObject(id=c.id, created=c.created, owned_by=c.owned_by) for c in cards]
    )


@get("/health")
async def health(llm: LlmClient, settings: RouterSettings, state: State) -> dict[str, Any]:
    cards = await llm.models(settings.discovery_window_s)
    zone = npu_temperature(Path(settings.sysfs_root))
    return {
        "status": "ok" if cards else "degraded",
        "nats": {"connected": state.nc.is_connected},
        "services": {"llm": {"reachable": bool(cards), "models": [c.id for c in cards]}},
        "npu": {
            "temperature_c": zone.celsius if zone else None,
            "thermal_zone": zone.type if zone else None,
        },
    }
