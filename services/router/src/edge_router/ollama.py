"""The Ollama API on the router: /api/chat, /api/generate, /api/tags, /api/show, /api/ps,
/api/embed, /api/embeddings and /api/version, for apps written for Ollama.

There is no second routing path: a chat or generate request is translated into the router's
OpenAI-shaped request (protocol.ChatCompletionRequest, and the plain JSON a cloud upstream is
sent) and run by api.run_chat exactly as /v1/chat/completions is (keys, scopes, rate limits,
policy, admission, fallback, metrics, local-only keys). The answer, ours or a cloud's OpenAI
bytes, is translated back into Ollama's NDJSON lines (streaming is Ollama's default) or one
object. Embeddings go to the rag workers' embedders, as /v1/embeddings does. Errors are
Ollama's `{"error": "..."}` with the status the router gives; once a stream has started, a
failure is its last line.

The translation is pure (OpenAI <-> Ollama, tested alone); the HTTP handlers come last.
"""

import array
import base64
import hashlib
import re
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import structlog
from edge_common.protocol import rag as rag_wire
from edge_common.protocol.llm import MAX_STOP_CHARS, MAX_STOPS
from edge_common.wire import INT64, ModelCard
from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream
from msgspec import Meta

from edge_router import policy
from edge_router import protocol as p
from edge_router.api import Chats, run_chat
from edge_router.cloud import CloudClient
from edge_router.errors import (
    ApiError,
    BadGateway,
    InvalidRequest,
    UpstreamAnswer,
    decoded,
    invalid_body,
    model_not_found,
)
from edge_router.local_state import LocalCatalog
from edge_router.metrics import Observation
from edge_router.rag import RagClient, embedder_named
from edge_router.request_id import request_id_of

log = structlog.get_logger(__name__)
VERSION = "0.9.0"
"""The Ollama release whose API this mirrors (clients gate features on it: JSON-schema
`format` needs 0.5, streamed tool calls 0.8)."""
DEFAULT_TAG = ":latest"
NDJSON = "application/x-ndjson"
_json = msgspec.json.Encoder()

# --- requests ----------------------------------------------------------------------------

StopString = Annotated[str, Meta(max_length=MAX_STOP_CHARS)]


class Options(msgspec.Struct, kw_only=True):
    """The Modelfile options the router maps; the others (top_k, repeat_penalty, mirostat,
    num_gpu...) are accepted and ignored, as Ollama ignores options a runner lacks."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    num_predict: Annotated[int, Meta(ge=-2)] | None = None
    """-1: no limit, -2: fill the context (both: the model's own bound)."""
    stop: Annotated[list[StopString], Meta(max_length=MAX_STOPS)] | None = None
    seed: INT64 | None = None
    num_ctx: Annotated[int, Meta(ge=1)] | None = None
    """Accepted, not applied: a model's window is fixed when its worker loads it."""


class Function(msgspec.Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct, kw_only=True):
    function: Function


class Message(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    """Base64 images, no data: prefix."""
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    """A tool message: the tool whose result it is."""
    thinking: str | None = None
    """A thinking model's reasoning, sent back in a history: not part of the prompt."""


Format = Literal["", "json"] | dict[str, Any] | None
"""`json`, or a JSON schema."""
KeepAlive = float | str | None
"""Accepted, not applied: workers keep models resident by their own policy."""
Think = bool | str | None


class ChatBody(msgspec.Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = None
    """Unset: streamed (Ollama's default)."""
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: Think = None


class GenerateBody(msgspec.Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    stream: bool | None = None
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    suffix: str | None = None
    template: str | None = None
    raw: bool | None = None
    context: list[int] | None = None


class ShowBody(msgspec.Struct, kw_only=True):
    model: str = ""
    name: str = ""
    """The field's name before Ollama 0.5."""
    verbose: bool | None = None


class EmbedBody(msgspec.Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    input: str | list[str]
    truncate: bool = True
    """False: an input longer than the embedder takes is an error, not cut."""
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class LegacyEmbedBody(msgspec.Struct, kw_only=True):
    """/api/embeddings, superseded by /api/embed."""

    model: Annotated[str, Meta(min_length=1)]
    prompt: Annotated[str, Meta(min_length=1)]
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


# --- Ollama -> OpenAI --------------------------------------------------------------------


def model_name(name: str) -> str:
    """An Ollama name as the router's id: `:latest` is Ollama's default tag, no part of it."""
    return name.removesuffix(DEFAULT_TAG)


_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def image_url(b64: str) -> str:
    """Ollama's bare base64 image as the data URL OpenAI's image parts take (its media type
    from the first bytes; anything else is judged unreadable later, by the image checks)."""
    try:  # 16 characters: 12 bytes, enough for every magic number
        head = base64.b64decode(b64[:16] + "=" * (-len(b64[:16]) % 4))
    except ValueError:
        head = b""
    media = next((m for magic, m in _MAGIC if head.startswith(magic)), "image/png")
    return f"data:{media};base64,{b64}"


def _user(content: str, images: list[str] | None) -> dict[str, Any]:
    if not images:
        return {"role": "user", "content": content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in images]
    return {"role": "user", "content": parts}


def _call_id(message: int, call: int) -> str:
    return f"call_{message}_{call}"


def messages(conversation: list[Message]) -> list[dict[str, Any]]:
    """An Ollama conversation as OpenAI messages: images become image parts of the user's
    message, tool calls get ids (OpenAI pairs a tool's result with its call by id, Ollama by
    the tool's name or order)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not answered yet
    for i, m in enumerate(conversation):
        if m.images and m.role != "user":
            raise InvalidRequest(
                "Images are taken in user messages only.",
                param=f"messages[{i}].images",
                code="invalid_value",
            )
        if m.role == "user":
            out.append(_user(m.content, m.images))
        elif m.role == "system":
            out.append({"role": "system", "content": m.content})
        elif m.role == "assistant":
            calls = m.tool_calls or []
            pending = [(_call_id(i, j), c.function.name) for j, c in enumerate(calls)]
            message: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": id_,
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": _json.encode(c.function.arguments).decode(),
                        },
                    }
                    for (id_, _), c in zip(pending, calls, strict=True)
                ]
            else:
                message["content"] = m.content
            out.append(message)
        else:
            matching = [c for c in pending if c[1] == m.tool_name] or pending
            if not matching:
                raise InvalidRequest(
                    "A tool message must answer a tool call of the assistant message before it.",
                    param=f"messages[{i}]",
                    code="invalid_value",
                )
            pending.remove(answered := matching[0])
            out.append({"role": "tool", "content": m.content, "tool_call_id": answered[0]})
    return out


def response_format(format_: Format) -> dict[str, Any] | None:
    """`format` as OpenAI's response_format: `json` is a JSON object, a schema is strict."""
    if not format_:
        return None
    if format_ == "json":
        return {"type": "json_object"}
    schema = {"name": "ollama_format", "schema": format_, "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def _request(
    model: str,
    conversation: list[dict[str, Any]],
    stream: bool | None,
    options: Options | None,
    format_: Format,
    max_tokens: int,
) -> dict[str, Any]:
    streamed = stream is not False
    out: dict[str, Any] = {"model": model_name(model), "messages": conversation}
    out["stream"] = streamed
    if streamed:  # the last line carries the token counts: ask for them
        out["stream_options"] = {"include_usage": True}
    o = options or Options()
    if o.num_predict is not None and o.num_predict >= 0:  # negative: no limit of its own
        if not 1 <= o.num_predict <= max_tokens:
            raise InvalidRequest(
                f"options.num_predict must be between 1 and {max_tokens} (or -1: no limit).",
                param="options.num_predict",
                code="invalid_value",
            )
        out["max_tokens"] = o.num_predict
    for name in ("temperature", "top_p", "seed", "stop"):
        if (value := getattr(o, name)) is not None:
            out[name] = value
    if rf := response_format(format_):
        out["response_format"] = rf
    return out


def chat_request(body: ChatBody, max_tokens: int) -> dict[str, Any]:
    """The OpenAI chat request (plain JSON) an Ollama chat is; `max_tokens`: the router's
    bound on num_predict."""
    out = _request(
        body.model, messages(body.messages), body.stream, body.options, body.format, max_tokens
    )
    if body.tools:
        out["tools"] = body.tools
    return out


def generate_request(body: GenerateBody, max_tokens: int) -> dict[str, Any]:
    """The OpenAI chat request an Ollama generate is: `system`, then the prompt (with its
    images) as the user's message, in the model's own chat template."""
    for field, unsupported in (
        ("suffix", body.suffix),
        ("template", body.template),
        ("raw", body.raw),
        ("context", body.context),
    ):
        if unsupported:
            raise InvalidRequest(
                f"`{field}` is not supported: prompts always go through the model's own chat "
                "template (send the history with /api/chat).",
                param=field,
                code="unsupported",
            )
    system = [{"role": "system", "content": body.system}] if body.system else []
    conversation = [*system, _user(body.prompt, body.images)]
    return _request(body.model, conversation, body.stream, body.options, body.format, max_tokens)


def openai_request(raw: dict[str, Any]) -> p.ChatCompletionRequest:
    """The translated request as the chat service takes it (checked as /v1 checks it)."""
    try:
        return msgspec.convert(raw, p.ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from None


# --- OpenAI -> Ollama --------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class _Call(msgspec.Struct):
    index: int = 0
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_Call] | None = None


class _Choice(msgspec.Struct):
    delta: _Message | None = None
    message: _Message | None = None
    finish_reason: str | None = None


class _Answer(msgspec.Struct):
    """What is read of an OpenAI completion or chunk, ours or an upstream's."""

    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: p.Usage | None = None


_read = msgspec.json.Decoder(_Answer).decode


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line(model: str, kind: Literal["chat", "generate"], text: str, **extra: Any) -> dict[str, Any]:
    """The start of an Ollama line: the model, the time, the text (and a chat's `extra`)."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": text, **extra}
    else:
        out["response"] = text
    return out


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text or "{}")
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise BadGateway("The model's tool call arguments are not a JSON object.")
    return value


class Reply:
    """An OpenAI answer, whole or streamed, as Ollama's chat (`message`) or generate
    (`response`) lines: content lines while streaming, then the tool calls (whole: Ollama
    does not stream their pieces), then the last line with `done`, `done_reason`, the token
    counts and the durations (ns) since `started_ns` (time.perf_counter_ns)."""

    def __init__(self, model: str, kind: Literal["chat", "generate"], started_ns: int) -> None:
        self._model, self._kind, self._started = model, kind, started_ns
        self._first_ns: int | None = None
        self._calls: dict[int, list[str]] = {}  # index -> [name, arguments so far]
        self._finish: str | None = None
        self._usage: p.Usage | None = None

    def _line(self, text: str, **extra: Any) -> dict[str, Any]:
        return line(self._model, self._kind, text, **extra)

    def _take(self, answer: _Answer) -> str:
        """The text of `answer`; its tool calls, finish reason and usage noted."""
        self._usage = answer.usage or self._usage
        text = []
        for choice in answer.choices[:1]:
            self._finish = choice.finish_reason or self._finish
            part = choice.delta or choice.message
            if part is None:
                continue
            for i, call in enumerate(part.tool_calls or []):
                index = call.index if choice.delta else i
                fn = call.function or _Function()
                got = self._calls.setdefault(index, ["", ""])
                got[0] += fn.name
                got[1] += fn.arguments
            if part.content:
                text.append(part.content)
        if text and self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        return "".join(text)

    def _tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"function": {"name": name, "arguments": _arguments(arguments)}}
            for _, (name, arguments) in sorted(self._calls.items())
        ]

    def _done(self, line: dict[str, Any]) -> dict[str, Any]:
        end = time.perf_counter_ns()
        first = self._first_ns or end
        line["done"] = True
        line["done_reason"] = "length" if self._finish == "length" else "stop"
        line["total_duration"] = end - self._started
        line["load_duration"] = 0
        if self._usage:
            line["prompt_eval_count"] = self._usage.prompt_tokens
        line["prompt_eval_duration"] = first - self._started
        if self._usage:
            line["eval_count"] = self._usage.completion_tokens
        line["eval_duration"] = end - first
        return line

    def chunk(self, payload: bytes) -> list[bytes]:
        """The lines (JSON, no newline) for one streamed OpenAI chunk."""
        try:
            text = self._take(_read(payload))
        except msgspec.DecodeError:
            raise BadGateway("The model's stream could not be read.") from None
        if not text:
            return []
        line = self._line(text)
        line["done"] = False
        return [_json.encode(line)]

    def end(self) -> list[bytes]:
        """The lines that end a stream: the tool calls, if any, then the last line."""
        lines = []
        if self._calls and self._kind == "chat":
            calls = self._line("", tool_calls=self._tool_calls())
            calls["done"] = False
            lines.append(_json.encode(calls))
        lines.append(_json.encode(self._done(self._line(""))))
        return lines

    def whole(self, body: bytes) -> bytes:
        """A whole OpenAI completion as one Ollama object."""
        try:
            text = self._take(_read(body))
        except msgspec.DecodeError:
            raise BadGateway("The model's answer could not be read.") from None
        extra = {"tool_calls": self._tool_calls()} if self._calls and self._kind == "chat" else {}
        return _json.encode(self._done(self._line(text, **extra)))


# --- models --------------------------------------------------------------------------------


def _digest(model: str) -> str:
    """A stable stand-in for Ollama's blob digest (the router holds no blobs)."""
    return hashlib.sha256(model.encode()).hexdigest()


def _details(family: str = "") -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": "",
        "quantization_level": "",
    }


def _entry(model: str, modified: str, family: str) -> dict[str, Any]:
    return {
        "name": model,
        "model": model,
        "modified_at": modified,
        "size": 0,
        "digest": _digest(model),
        "details": _details(family),
    }


def tags(catalog: LocalCatalog, cloud: CloudClient) -> dict[str, Any]:
    """/api/tags: the routing aliases, the local models, the embedders, the cloud models
    (`details.family` says which: alias, npu or cpu, embedding, cloud)."""
    now = created_at()
    entries = [_entry(a, now, "alias") for a in policy.ALIASES]
    entries += [_entry(c.id, now, c.device) for c in catalog.cards.values()]
    entries += [_entry(m, now, "embedding") for m in catalog.embedders]
    entries += [_entry(m, now, "cloud") for m in cloud.models()]
    return {"models": entries}


def ps(catalog: LocalCatalog) -> dict[str, Any]:
    """/api/ps: the local models loaded now."""
    return {
        "models": [
            {
                **_entry(card.id, created_at(), card.device),
                "size_vram": 0,
                "context_length": card.context_length,
            }
            for card in catalog.cards.values()
            if card.id in catalog.resident
        ]
    }


def _capabilities(card: ModelCard | None, vision: bool) -> list[str]:
    can = card.capabilities if card else None
    return [
        "completion",
        *(["tools"] if can is None or can.tools else []),
        *(["vision"] if vision or (can and can.vision) else []),
    ]


def show(model: str, catalog: LocalCatalog, cloud: CloudClient) -> dict[str, Any] | None:
    """/api/show for `model` (None: no such model): its capabilities (completion, tools,
    vision, embedding) and context window as Ollama's `model_info` carries them."""
    model = model_name(model)
    info: dict[str, Any] = {"general.architecture": "edge", "general.basename": model}
    if card := catalog.cards.get(model):
        # images reach a model without vision through object detection
        capabilities = _capabilities(card, bool(catalog.detectors))
        info["edge.context_length"] = card.context_length
        family = card.device
    elif model in catalog.embedders:
        capabilities = ["embedding"]
        info["edge.embedding_length"] = catalog.embedders[model].dimension
        family = "embedding"
    elif model in cloud.models():
        capabilities, family = _capabilities(None, model in cloud.vision_models()), "cloud"
    elif model in policy.ALIASES:
        capabilities, family = _capabilities(None, True), "alias"
    else:
        return None
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _details(family),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": created_at(),
    }


def vectors(embedded: rag_wire.Embedded) -> list[list[float]]:
    """The worker's little-endian float32 rows as lists of floats."""
    floats = array.array("f", embedded.data)
    if sys.byteorder == "big":
        floats.byteswap()
    d = embedded.dimension
    return [floats[i : i + d].tolist() for i in range(0, len(floats), d)]


# --- errors --------------------------------------------------------------------------------

_BACKTICKED = re.compile(r"`([^`]*)`")


def error_message(exc: ApiError) -> str:
    """The router's error as Ollama words it (its 404 for a model: `model "x" not found`); a
    cloud upstream's own refusal with its message."""
    if isinstance(exc, UpstreamAnswer):
        try:
            detail = msgspec.json.decode(exc.raw).get("error")
        except (msgspec.DecodeError, AttributeError):
            detail = None
        if isinstance(detail, dict):
            detail = detail.get("message")
        return str(detail) if detail else exc.raw.decode(errors="replace")[:500]
    if exc.code == "model_not_found" and (named := _BACKTICKED.search(exc.message)):
        return f'model "{named[1]}" not found'
    return exc.message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response({"error": message}, status_code=status, headers=headers or {})


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return _error(exc.status, error_message(exc), exc.headers)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _error(exc.status_code, exc.detail, dict(exc.headers or {}))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("router.unhandled_error", path=request.url.path)
    return _error(500, "The server had an error while processing your request.")


ERRORS = {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected}
"""On every /api handler, the key check included: Ollama's error shape."""


# --- HTTP ----------------------------------------------------------------------------------


async def _ndjson(
    payloads: AsyncIterator[bytes], reply: Reply, seen: Observation
) -> AsyncIterator[bytes]:
    status = 499  # unless we get to the end: the client went away
    try:
        async for payload in payloads:
            seen.payload(payload)
            for line in reply.chunk(payload):
                yield line + b"\n"
        for line in reply.end():
            yield line + b"\n"
        status = 200
    except ApiError as exc:  # headers are gone: the failure is the last line, as Ollama's
        log.warning("router.stream_failed", error=exc.message, code=exc.code)
        status = exc.status
        yield _json.encode({"error": error_message(exc)}) + b"\n"
    finally:
        seen.done(status)


def _loaded(model: str, kind: Literal["chat", "generate"]) -> Response[Any]:
    """An empty chat or prompt: Ollama loads the model and says so. Here workers load on
    demand; the answer is the same."""
    return Response({**line(model, kind, ""), "done": True, "done_reason": "load"})


async def _answer(
    kind: Literal["chat", "generate"],
    asked: str,
    raw: dict[str, Any],
    chats: Chats,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    started = time.perf_counter_ns()
    routed, headers, seen = await run_chat(chats, request, openai_request(raw), raw)
    reply = Reply(asked, kind, started)
    if isinstance(routed.body, bytes):
        seen.payload(routed.body)
        try:
            body = reply.whole(routed.body)
        except ApiError as exc:
            seen.done(exc.status)
            raise
        seen.done(200)
        return Response(body, media_type="application/json", headers=headers)
    return Stream(
        _ndjson(routed.body, reply, seen),
        media_type=NDJSON,
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _shown(model: str, catalog: LocalCatalog, cloud: CloudClient) -> dict[str, Any]:
    """/api/show's answer for `model`, or 404 when no route serves it."""
    if (found := show(model, catalog, cloud)) is None:
        await catalog.refresh_on_miss()  # a worker may have come up since
        found = show(model, catalog, cloud)
    if found is None:
        raise model_not_found(model)
    return found


@post("/api/chat", status_code=200, exception_handlers=ERRORS, include_in_schema=False)
async def ollama_chat(
    chats: Chats,
    catalog: LocalCatalog,
    cloud: CloudClient,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """Ollama's chat (scope `chat`), run as /v1/chat/completions runs."""
    body = decoded(await request.body(), ChatBody)
    if not body.messages:
        await _shown(body.model, catalog, cloud)  # or 404
        return _loaded(body.model, "chat")
    raw = chat_request(body, chats.settings.limits.max_tokens)
    return await _answer("chat", body.model, raw, chats, request)


@post("/api/generate", status_code=200, exception_handlers=ERRORS, include_in_schema=False)
async def ollama_generate(
    chats: Chats,
    catalog: LocalCatalog,
    cloud: CloudClient,
    request: Request[Any, Any, Any],
) -> Response[Any]:
    """Ollama's generate (scope `chat`): the prompt as a one-turn chat."""
    body = decoded(await request.body(), GenerateBody)
    if not body.prompt and not body.images:
        await _shown(body.model, catalog, cloud)  # or 404
        return _loaded(body.model, "generate")
    raw = generate_request(body, chats.settings.limits.max_tokens)
    return await _answer("generate", body.model, raw, chats, request)


@get("/api/tags", exception_handlers=ERRORS, include_in_schema=False)
async def ollama_tags(catalog: LocalCatalog, cloud: CloudClient) -> dict[str, Any]:
    return tags(catalog, cloud)


@get("/api/ps", exception_handlers=ERRORS, include_in_schema=False)
async def ollama_ps(catalog: LocalCatalog) -> dict[str, Any]:
    return ps(catalog)


@post("/api/show", status_code=200, exception_handlers=ERRORS, include_in_schema=False)
async def ollama_show(
    catalog: LocalCatalog, cloud: CloudClient, request: Request[Any, Any, Any]
) -> Response[Any]:
    body = decoded(await request.body(), ShowBody)
    model = body.model or body.name
    return Response(await _shown(model, catalog, cloud))


@get("/api/version", exception_handlers=ERRORS, include_in_schema=False)
async def ollama_version() -> dict[str, str]:
    return {"version": VERSION}


async def _embedded(
    rag: RagClient, catalog: LocalCatalog, model: str, texts: list[str], request_id: str
) -> Any:
    model = await embedder_named(catalog, model_name(model))
    return await rag.embed(rag_wire.EmbedRequest(request_id=request_id, model=model, input=texts))


@post("/api/embed", status_code=200, exception_handlers=ERRORS, include_in_schema=False)
async def ollama_embed(
    rag: RagClient, catalog: LocalCatalog, request: Request[Any, Any, Any]
) -> Response[Any]:
    """Ollama's embeddings (scope `embeddings`) by the rag workers' embedders."""
    started = time.perf_counter_ns()
    body = decoded(await request.body(), EmbedBody)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(texts) or len(texts) > rag_wire.MAX_EMBED_INPUTS:
        raise InvalidRequest(
            f"`input` must be a non-empty string or 1 to {rag_wire.MAX_EMBED_INPUTS} of them.",
            param="input",
            code="invalid_value",
        )
    embedded = await _embedded(rag, catalog, body.model, texts, request_id_of(request.scope))
    if not body.truncate and embedded.truncated:
        raise InvalidRequest("input length exceeds the context length", param="input")
    if body.dimensions is not None and body.dimensions != embedded.dimension:
        raise InvalidRequest(
            f"Model `{embedded.model}` gives {embedded.dimension} dimensions only.",
            param="dimensions",
            code="unsupported",
        )
    answer = {
        "model": body.model,
        "embeddings": vectors(embedded),
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_count": sum(embedded.tokens),
    }
    return Response(_json.encode(answer), media_type="application/json")


@post("/api/embeddings", status_code=200, exception_handlers=ERRORS, include_in_schema=False)
async def ollama_embeddings(
    rag: RagClient, catalog: LocalCatalog, request: Request[Any, Any, Any]
) -> Response[Any]:
    """The legacy one-prompt embeddings (scope `embeddings`)."""
    body = decoded(await request.body(), LegacyEmbedBody)
    embedded = await _embedded(
        rag, catalog, body.model, [body.prompt], request_id_of(request.scope)
    )
    answer = {"embedding": vectors(embedded)[0]}
    return Response(_json.encode(answer), media_type="application/json")


ROUTES = [
    ollama_chat,
    ollama_generate,
    ollama_tags,
    ollama_ps,
    ollama_show,
    ollama_version,
    ollama_embed,
    ollama_embeddings,
]
