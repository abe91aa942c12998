"""Chat completions: decide where a request runs, run it there, fall back when that fails.

Pure of HTTP: returns a Routed value whose body is either one JSON document or an async
iterator of SSE payloads (JSON bytes); api.py frames them. Local answers are built from
the llm wire events; cloud answers are the upstream's bytes, relayed unchanged.
"""

import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import structlog
from edge_common import wire
from edge_common.thermal import npu_temperature
from PIL import Image

from edge_router import policy
from edge_router import protocol as p
from edge_router.admission import Admission
from edge_router.cloud import CloudClient
from edge_router.errors import ApiError, BadGateway, InvalidRequest, Unavailable
from edge_router.llm_client import Events, LlmClient
from edge_router.local_state import LocalCatalog
from edge_router.settings import InputLimits, PolicySettings

log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()

Body = bytes | AsyncIterator[bytes]


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks, as far as routing and admission care."""

    local_only: bool = False
    priority: int = 0
    """Higher runs sooner when the local queue is not empty."""
    deadline_s: float | None = None
    """Longest queue wait the caller accepts."""


class Routed(msgspec.Struct, frozen=True):
    decision: policy.Decision
    body: Body


ROLES: dict[type, Literal["system", "user", "assistant"]] = {
    p.SystemMessage: "system",
    p.DeveloperMessage: "system",
    p.UserMessage: "user",
    p.AssistantMessage: "assistant",
}


def _messages(messages: list[p.Message]) -> list[wire.ChatMessage]:
    """The conversation as text. The routing policy sends a request to a local model only
    within that model's capabilities (no images, tools or tool messages for a text model)."""
    return [
        wire.ChatMessage(role=ROLES[type(m)], content=policy.text_of(m))
        for m in messages
        if type(m) in ROLES
    ]


def _check_image(url: str, limits: InputLimits, param: str) -> None:
    """An inline image: base64, within the size limit, readable, within the pixel limit.
    Only its header is read (no decoding of pixels)."""
    param += ".image_url"
    pixels = f"Images are at most {limits.max_image_pixels:,} pixels"
    if len(url) * 3 / 4 > limits.max_image_mb * 2**20:
        raise InvalidRequest(
            f"Images are at most {limits.max_image_mb:g} MB.", param=param, code="image_too_large"
        )
    media, _, payload = url.partition(",")
    try:
        if not media.endswith(";base64"):
            raise ValueError("not base64")
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own bound, far beyond ours
        raise InvalidRequest(f"{pixels}.", param=param, code="image_too_large") from None
    except (ValueError, OSError):  # binascii.Error is a ValueError
        raise InvalidRequest(
            "The image could not be read: send a PNG, JPEG, GIF or WebP as a base64 data URL.",
            param=param,
            code="invalid_image",
        ) from None
    if width * height > limits.max_image_pixels:
        raise InvalidRequest(
            f"{pixels}; this one is {width}x{height}.", param=param, code="image_too_large"
        )


def check(request: p.ChatCompletionRequest, limits: InputLimits) -> None:
    """What no target accepts, whatever the route."""
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            f"At most {limits.max_messages} messages are accepted.",
            param="messages",
            code="too_many_messages",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        if (value := getattr(request, name)) and value > limits.max_tokens:
            raise InvalidRequest(
                f"{name} is at most {limits.max_tokens}.", param=name, code="invalid_value"
            )
    for i, message in enumerate(request.messages):
        if isinstance(message, p.UserMessage) and not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if isinstance(part, p.ImagePart) and part.image_url.url.startswith("data:"):
                    _check_image(part.image_url.url, limits, f"messages[{i}].content[{j}]")
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported")


def to_wire(request: p.ChatCompletionRequest, model: str, request_id: str) -> wire.ChatRequest:
    """A checked request (see `check`), routed to local `model`, as the llm worker takes it."""
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    return wire.ChatRequest(
        request_id=request_id,
        model=model,
        messages=_messages(request.messages),
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=stop,
        seed=request.seed,
    )


def _usage(done: wire.Done) -> p.Usage:
    return p.Usage(
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        total_tokens=done.prompt_tokens + done.completion_tokens,
    )


UsageSink = Callable[[p.Usage], None]


async def _started(events: Events) -> Events:
    """`events`, once its first event has arrived (errors before it raise here)."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise

    async def replay() -> Events:
        async with aclosing(events):
            yield first
            async for event in events:
                yield event

    return replay()


async def _usage_taken(payloads: AsyncIterator[bytes], watcher: "Watcher") -> AsyncIterator[bytes]:
    """A cloud stream with the usage chunk we asked for on the client's behalf: the usage
    goes to `watcher`, the chunk (`choices: []`) not to the client, who did not ask."""
    async with aclosing(payloads):
        async for payload in payloads:
            if b'"usage"' in payload:
                with contextlib.suppress(msgspec.DecodeError):  # relayed as it is then
                    chunk = p.read_answer(payload)
                    if chunk.usage and not chunk.choices:
                        watcher.counted(chunk.usage)
                        continue
            yield payload


class Watcher(Protocol):
    """Hears what a request goes through (metrics.Observation)."""

    def queued(self, wait_s: float) -> None:
        """It waited this long for a local slot."""

    def counted(self, usage: p.Usage) -> None:
        """The token counts of a local generation or a cloud stream."""


def _ignore(_: p.Usage) -> None:
    pass


async def chunks(
    events: Events,
    id_: str,
    model: str,
    include_usage: bool,
    on_usage: UsageSink = _ignore,
) -> AsyncIterator[p.ChatCompletionChunk]:
    created = p.now()

    def chunk(delta: p.ChunkDelta, finish: p.FinishReason | None = None) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=id_,
            created=created,
            model=model,
            choices=[p.ChunkChoice(delta=delta, finish_reason=finish)],
        )

    yield chunk(p.ChunkDelta(role="assistant", content=""))
    async for event in events:
        if isinstance(event, wire.Delta):
            yield chunk(p.ChunkDelta(content=event.text))
        else:
            on_usage(_usage(event))
            yield chunk(p.ChunkDelta(), event.finish_reason)
            if include_usage:
                yield p.ChatCompletionChunk(
                    id=id_, created=created, model=model, choices=[], usage=_usage(event)
                )


class ChatService:
    def __init__(
        self,
        llm: LlmClient,
        cloud: CloudClient,
        catalog: LocalCatalog,
        admission: Admission,
        policy_settings: PolicySettings,
        sysfs_root: Path,
        local_only: bool,
        limits: InputLimits,
    ) -> None:
        self._llm = llm
        self._cloud = cloud
        self._catalog = catalog
        self._admission = admission
        self._policy = policy_settings
        self._sysfs_root = sysfs_root
        self._local_only = local_only
        self._limits = limits

    async def state(self, model: str, caller: Caller) -> policy.State:
        known = model in policy.ALIASES or model in self._catalog.cards
        if (not known and model not in self._cloud.models()) or not self._catalog.cards:
            await self._catalog.refresh_on_miss()  # a worker may have come up since
        zone = npu_temperature(self._sysfs_root)
        return policy.State(
            local=policy.Local(
                models=self._catalog.cards,
                down=self._catalog.down,
                queue_wait_s=self._admission.estimate_s(),
                switch_s=self._catalog.switch_costs(),
                queue_full=self._admission.full,
                npu_temp_c=zone.celsius if zone else None,
            ),
            cloud=policy.Cloud(
                models=self._cloud.models(), open_breakers=self._cloud.open_breakers()
            ),
            local_only=caller.local_only or self._local_only,
        )

    def validate(self, request: p.ChatCompletionRequest) -> None:
        """What no target accepts (see `check`): before anything counts the request."""
        check(request, self._limits)

    async def explain(self, request: p.ChatCompletionRequest, caller: Caller) -> dict[str, Any]:
        """Where a validated request would go, and why."""
        features = policy.features_of(request)
        state = await self.state(request.model, caller)
        score, named = policy.complexity(features, self._policy)
        out: dict[str, Any] = {
            "features": features,
            "complexity": {"score": score, "from": named, "threshold": self._policy.hard_score},
            "state": state,
        }
        try:
            out["decision"] = policy.decide(request.model, features, state, self._policy)
        except ApiError as exc:
            out["decision"] = None
            out["error"] = exc.body()
            out["status"] = exc.status
        return out

    async def handle(
        self,
        request: p.ChatCompletionRequest,
        raw: dict[str, Any],
        request_id: str,
        caller: Caller,
        watcher: Watcher,
    ) -> Routed:
        """Route and run a validated request; `watcher` hears the queue wait and the token
        counts."""
        features = policy.features_of(request)
        state = await self.state(request.model, caller)
        decision = policy.decide(request.model, features, state, self._policy)
        try:
            return Routed(
                decision, await self._run(decision, request, raw, request_id, caller, watcher)
            )
        except (Unavailable, BadGateway) as exc:
            fallback = decision.fallback
            if fallback is None:
                raise
            log.warning(
                "router.fallback", failed=decision.target, to=fallback.target, reason=exc.message
            )
            decision = policy.Decision(
                target=fallback.target,
                model=fallback.model,
                upstream=fallback.upstream,
                reasons=[
                    *decision.reasons,
                    f"{decision.target} failed, fell back to {fallback.target}",
                ],
            )
            return Routed(
                decision, await self._run(decision, request, raw, request_id, caller, watcher)
            )

    async def _run(
        self,
        d: policy.Decision,
        request: p.ChatCompletionRequest,
        raw: dict[str, Any],
        request_id: str,
        caller: Caller,
        watcher: Watcher,
    ) -> Body:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        if d.target == "cloud":
            assert d.upstream is not None
            body = {**raw, "model": d.model}
            if not request.stream:
                return await self._cloud.complete(d.upstream, body)
            if include_usage:
                return await self._cloud.stream(d.upstream, body)
            # ask for usage anyway (rate limits settle with it, metrics count it), keep it
            body["stream_options"] = {**(raw.get("stream_options") or {}), "include_usage": True}
            return _usage_taken(await self._cloud.stream(d.upstream, body), watcher)
        wire_request = to_wire(request, d.model, request_id)
        # the admission slot is held until the generation ends, streams included
        held = AsyncExitStack()
        async with held:
            arrived = time.perf_counter()
            await held.enter_async_context(
                self._admission.slot(priority=caller.priority, deadline_s=caller.deadline_s)
            )
            watcher.queued(time.perf_counter() - arrived)
            events = await self._submit(wire_request)
            # the first event before answering: a worker that fails before its first token
            # (gone, overloaded) makes this raise, so that the request can fall back
            events = await _started(events)
            if request.stream:
                return self._local_stream(
                    wire_request, include_usage, events, held.pop_all(), watcher.counted
                )
            return _json.encode(await self._collect(events, d.model, request_id))

    async def _submit(self, request: wire.ChatRequest) -> Events:
        try:
            events = await self._llm.stream_chat(request)
        except Unavailable:
            self._catalog.mark_down(request.model)
            raise
        return events

    async def _local_stream(
        self,
        request: wire.ChatRequest,
        include_usage: bool,
        events: Events,
        held: AsyncExitStack,
        on_usage: UsageSink,
    ) -> AsyncIterator[bytes]:
        async with held:
            id_ = f"chatcmpl-{request.request_id}"
            async for chunk in chunks(events, id_, request.model, include_usage, on_usage):
                yield _json.encode(chunk)

    @staticmethod
    async def _collect(events: Events, model: str, request_id: str) -> p.ChatCompletion:
        text: list[str] = []
        done: wire.Done | None = None
        async for event in events:
            if isinstance(event, wire.Delta):
                text.append(event.text)
            else:
                done = event
        assert done is not None  # the event stream ends with Done or raises
        return p.ChatCompletion(
            id=f"chatcmpl-{request_id}",
            created=p.now(),
            model=model,
            choices=[
                p.Choice(
                    message=p.ResponseMessage(content="".join(text)),
                    finish_reason=done.finish_reason,
                )
            ],
            usage=_usage(done),
        )
