"""HTTP surface: OpenAI-compatible endpoints, the route explainer and /health. Framing only."""

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import structlog
from edge_common.thermal import npu_freq_mhz, npu_load, npu_temperature
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from edge_router import policy
from edge_router import protocol as p
from edge_router.admission import Admission
from edge_router.auth import has_scope, key_of
from edge_router.caller import Caller
from edge_router.chat import ChatService, Routed
from edge_router.cloud import CloudClient
from edge_router.errors import (
    ERROR_RESPONSES,
    ApiError,
    Forbidden,
    InvalidRequest,
    decoded,
    invalid_body,
    model_not_found,
)
from edge_router.gone import unless_gone
from edge_router.grounding import with_citations
from edge_router.local_state import LocalCatalog
from edge_router.metrics import Observation
from edge_router.processes import supervised
from edge_router.ratelimit import RateLimits, Ticket, counts
from edge_router.request_id import request_id_of
from edge_router.settings import PolicySettings, RouterSettings

log = structlog.get_logger(__name__)
LOCAL_ONLY_HEADER = "x-edge-local-only"
COMPLETION_ESTIMATE = 256
"""Tokens a request that names no max_tokens is assumed to use, for tokens-per-minute."""


async def _sse(payloads: AsyncIterator[bytes], seen: Observation) -> AsyncIterator[bytes]:
    status = 499  # unless we get to the end: the client went away
    try:
        async for payload in payloads:
            seen.payload(payload)
            yield b"data: " + payload + b"\n\n"
        status = 200
        yield b"data: [DONE]\n\n"
    except ApiError as exc:
        # headers are gone: the failure travels as a last event, as OpenAI does
        log.warning("router.stream_failed", error=exc.message, code=exc.code)
        status = exc.status
        yield b"data: " + p.encode(exc.body()) + b"\n\n"
    finally:
        seen.done(status)


def _number(request: Request[Any, Any, Any], *names: str, positive: bool = False) -> float | None:
    for name in names:
        if value := request.headers.get(name):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            # inf and nan would overflow or poison the queue
            if not math.isfinite(number) or (positive and number <= 0):
                what = "a positive number" if positive else "a number"
                raise InvalidRequest(f"Header {name} must be {what}.", param=name)
            return number
    return None


def caller_of(request: Request[Any, Any, Any], settings: RouterSettings) -> Caller:
    """Routing and admission facts about who asks, from the request's headers.

    The deadline is `x-edge-deadline-s`, else the timeout the openai SDKs announce in
    `x-stainless-timeout`, else the configured default.
    """
    deadline = _number(request, "x-edge-deadline-s", "x-stainless-timeout", positive=True)
    key = key_of(request)
    asked_local = request.headers.get(LOCAL_ONLY_HEADER, "").lower() in ("1", "true", "yes")
    return Caller(
        local_only=asked_local or bool(key and key.local_only),  # a header can only narrow
        priority=key.priority if key else int(_number(request, "x-edge-priority") or 0),
        deadline_s=deadline or settings.default_deadline_s or None,
    )


def _cited(routed: Routed) -> bytes | AsyncIterator[bytes]:
    """The answer with its sources in `citations`: on the completion, or on the first chunk."""
    if isinstance(routed.body, bytes):
        return with_citations(routed.body, routed.citations)

    async def first_cited(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        cited = False
        async for chunk in chunks:
            yield chunk if cited else with_citations(chunk, routed.citations)
            cited = True

    return first_cited(routed.body)


class Chats(msgspec.Struct, frozen=True):
    """What the chat endpoints need, as one dependency: Litestar resolves two or more
    dependencies of a handler concurrently in an anyio task group, which was a sixth of the
    router's CPU on a cloud request."""

    service: ChatService
    limits: RateLimits
    settings: RouterSettings


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _header_value(text: str) -> str:
    """`text` as a header value: printable ASCII as it is, anything else (a model id in
    another script, a control character) and `%` percent-encoded as UTF-8."""
    return quote(text, safe=_HEADER_SAFE)


def _route_headers(routed: Routed) -> dict[str, str]:
    d = routed.decision
    return {
        "x-edge-route": d.target,
        "x-edge-route-reason": _header_value("; ".join(d.reasons)),
        "x-edge-model": _header_value(d.model),
    }


async def chat_body(request: Request[Any, Any, Any]) -> tuple[p.ChatCompletionRequest, Any]:
    """The body decoded strictly, as OpenAI does ("5" is no integer, 0 no boolean; Litestar's
    own parsing is lenient), and as plain JSON (passed on to cloud upstreams)."""
    raw = decoded(await request.body(), dict[str, Any])
    try:
        return msgspec.convert(raw, p.ChatCompletionRequest), raw
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None


# The request body is documented by edge_router.openapi (msgspec's schema).
@post("/v1/chat/completions", status_code=200, responses=ERROR_RESPONSES)
async def chat_completions(chats: Chats, request: Request[Any, Any, Any]) -> Response[Any]:
    data, raw = await chat_body(request)
    routed, headers, seen = await run_chat(chats, request, data, raw)
    body = _cited(routed) if routed.citations else routed.body
    if isinstance(body, bytes):
        seen.payload(body)
        seen.done(200)
        return Response(body, media_type="application/json", headers=headers)
    return Stream(
        _sse(body, seen),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def run_chat(
    chats: Chats,
    request: Request[Any, Any, Any],
    data: p.ChatCompletionRequest,
    raw: dict[str, Any],
) -> tuple[Routed, dict[str, str], Observation]:
    """A decoded chat request checked, rate-limited, routed and run (cancelled if the client
    goes): the answer, its response headers and the request's Observation, which the caller
    tells of the payloads it sends and of the end (the OpenAI and Ollama surfaces share it)."""
    chat, limits, settings = chats.service, chats.limits, chats.settings
    caller = caller_of(request, settings)
    seen = Observation(data.model, raw["messages"] if settings.log_content else None)
    limit_headers: dict[str, str] = {}
    ticket: Ticket | None = None
    try:
        if data.rag and (key := key_of(request)) and not has_scope(key, "rag:read"):
            raise Forbidden(
                "This API key lacks the `rag:read` scope for a grounded chat (`rag`).",
                code="insufficient_scope",
            )
        chat.validate(data)  # a request no model takes costs no rate limit
        if (key := key_of(request)) and (key.rpm or key.tpm or key.max_parallel):
            budget = data.max_completion_tokens or data.max_tokens or COMPLETION_ESTIMATE
            ticket = limits.admit(key, policy.prompt_tokens_estimate(data) + budget)
            seen.on_done, limit_headers = ticket.finish, ticket.headers
        routed = await unless_gone(
            request,
            chat.handle(data, raw, request_id_of(request.scope), caller, seen),
        )
    except Exception as exc:
        if ticket and not counts(exc):
            ticket.refund()  # it reached no model (the settlement in `done` is then a no-op)
        seen.done(exc.status if isinstance(exc, ApiError) else 500)
        raise
    d = routed.decision
    seen.routed(d.target, d.model, d.reasons)
    return routed, _route_headers(routed) | limit_headers, seen


@post("/v1/route/explain", status_code=200, responses=ERROR_RESPONSES)
async def explain_route(chats: Chats, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Where this chat request would go, and why, without running it (one request of the
    key's requests per minute, no tokens)."""
    chat, limits, settings = chats.service, chats.limits, chats.settings
    data, _ = await chat_body(request)
    chat.validate(data)
    caller = caller_of(request, settings)
    ticket = limits.admit(key, None) if (key := key_of(request)) and key.rpm else None
    try:
        explained = await chat.explain(data, caller)
    except Exception:
        if ticket:
            ticket.refund()  # no explanation, no request counted
        raise
    return Response(explained, headers=ticket.headers if ticket else {})


def _models(catalog: LocalCatalog, cloud: CloudClient) -> list[p.ModelObject]:
    aliases = [p.ModelObject(id=a, created=0, owned_by="edge", route=a) for a in policy.ALIASES]
    local = [
        p.ModelObject(
            id=c.id,
            created=c.created,
            owned_by=c.owned_by,
            route="local",
            context_window=c.context_length,
            capabilities=p.ModelCapabilities(
                vision=c.capabilities.vision,
                tools=c.capabilities.tools,
                json=c.capabilities.json_output,
            ),
            runs_on=c.device,
            loaded=c.id in catalog.resident,
        )
        for c in catalog.cards.values()
    ]
    detectors = [
        p.ModelObject(
            id=d,
            created=0,
            owned_by="edge",
            route="local",
            task="detection",
            capabilities=p.ModelCapabilities(vision=True),
            loaded=not catalog.detector_switch_s.get(d),
        )
        for d in catalog.detectors
    ]
    embedders = [
        p.ModelObject(
            id=m,
            created=0,
            owned_by="edge",
            route="local",
            task="embedding",
            dimension=s.dimension,
            context_window=s.max_tokens or None,
            capabilities=p.ModelCapabilities(embeddings=True),
            runs_on=s.device,
        )
        for m, s in catalog.embedders.items()
    ]
    vision = set(cloud.vision_models())
    remote = [
        p.ModelObject(
            id=m,
            created=0,
            owned_by=upstream,
            route="cloud",
            # tools and response_format pass through to the upstream unchanged
            capabilities=p.ModelCapabilities(vision=m in vision, tools=True, json=True),
            runs_on="cloud",
        )
        for m, upstream in cloud.models().items()
    ]
    return [*aliases, *local, *detectors, *embedders, *remote]


@get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(catalog: LocalCatalog, cloud: CloudClient) -> p.ModelList:
    return p.ModelList(data=_models(catalog, cloud))


@get("/v1/models/{model:path}", responses=ERROR_RESPONSES)
async def retrieve_model(model: str, catalog: LocalCatalog, cloud: CloudClient) -> p.ModelObject:
    """One model of the list (ids may hold `/`)."""
    model = model.removeprefix("/")

    def find() -> p.ModelObject | None:
        return next((m for m in _models(catalog, cloud) if m.id == model), None)

    if not find():
        await catalog.refresh_on_miss()  # a worker may have come up since
    if found := find():
        return found
    raise model_not_found(model)


@get("/health", responses=ERROR_RESPONSES)
async def health(
    catalog: LocalCatalog,
    admission: Admission,
    cloud: CloudClient,
    settings: RouterSettings,
    state: State,
) -> dict[str, Any]:
    sysfs = Path(settings.sysfs_root)  # the catalog is kept fresh in the background
    zone = npu_temperature(sysfs)
    temp = zone.celsius if zone else None
    processes = supervised(settings.supervisor_file)
    failed = any(p.state == "failed" for p in processes.values())
    return {
        "status": "ok" if catalog.cards and not failed and state.nc.is_connected else "degraded",
        "processes": processes,
        "mode": "local-only" if settings.local_only or not cloud.upstreams else "hybrid",
        "auth": "on" if settings.keys_file else "off",
        "nats": {"connected": state.nc.is_connected},
        "services": {"llm": {"reachable": bool(catalog.cards), "models": list(catalog.cards)}},
        "local": {
            "instances": catalog.instances,
            "resident": sorted(catalog.resident),
            "switch_s": catalog.switch_s,
            "queue": admission.status(),
        },
        "cloud": {
            **{
                name: {
                    "enabled": True,
                    "breaker": b.state,
                    "retry_in_s": round(b.retry_in(), 3),
                    "retries": cloud.retries[name],
                }
                for name, b in cloud.breakers.items()
            },
            **{name: {"enabled": False, "reason": why} for name, why in cloud.disabled.items()},
        },
        "npu": {
            "temperature_c": temp,
            "thermal_zone": zone.type if zone else None,
            "thermal_state": thermal_state(temp, settings.policy),
            "load_percent": npu_load(sysfs),
            "freq_mhz": npu_freq_mhz(sysfs),
        },
    }


def thermal_state(celsius: float | None, policy: PolicySettings) -> str:
    if celsius is None:
        return "unknown"
    if celsius >= policy.critical_temp_c:
        return "critical"  # no new local work
    return "warn" if celsius >= policy.warn_temp_c else "ok"  # warn: new work prefers cloud
