"""Messages that cross a process boundary, msgpack-encoded on NATS.

Versioning rule: a new field always gets a default so that older peers keep decoding.
Version 2 (per-model subjects, Alive events) does not talk to version 1: upgrade the
services of a bus together.
The llm protocol, per chat request:

    router -> `llm.chat.<model>` (request/reply, see chat_subject): ChatRequest, naming
              `stream_to`, an inbox the router already listens on
    worker -> reply: Accepted (the request is queued for generation, naming the worker's
              micro service id), or a micro service error (headers Nats-Service-Error-Code /
              Nats-Service-Error) with a code below
    worker -> `stream_to`: Delta* then exactly one Done or Failed, and Alive every
              ALIVE_INTERVAL_S while it holds the request (queued, loading, prefilling),
              as a request the router answers: the router tells a dead worker from a slow
              one in seconds, and the worker learns at once when no router listens
    router -> `llm.cancel.<request_id>` (cancel_subject): Cancel, when the client went away
    router -> `llm.alive.<instance>` (alive_subject): after a second without events, is it still
              connected? NATS answers "no responders" at once when its connection is gone.
              (Not the micro PING subject: a draining worker stops its micro service but
              still finishes what it holds.)
"""

from typing import Annotated, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 2
REQUEST_ID_HEADER: Final = "Edge-Request-Id"

CHAT_PREFIX: Final = "llm.chat"

# Error codes carried in Failed.code and in micro error headers. The router maps them to
# HTTP statuses in exactly one place (edge_router.errors).
ErrorCode = Literal[
    "invalid_request",
    "model_not_found",
    "context_length_exceeded",
    "generation_failed",
    "unavailable",
    "invalid_image",
    "image_too_large",
]


MAX_STOPS: Final = 4
MAX_STOP_CHARS: Final = 512
"""Longest stop string (characters): the worker matches every stop against each token."""
INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every message: immutable, keyword-only."""


class ChatMessage(Wire):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Wire, tag="chat", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    model: str
    messages: list[ChatMessage]
    stream_to: str = ""
    """Inbox for the events; the transport fills it in."""
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    """None: the model's configured default."""
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_STOP_CHARS)]],
        msgspec.Meta(max_length=MAX_STOPS),
    ] = []
    seed: INT64 | None = None


class Cancel(Wire, tag="cancel"):
    request_id: str


class Accepted(Wire, tag="accepted"):
    prompt_tokens: int
    instance: str = ""
    """The accepting worker's id: it answers on `alive_subject(instance)` while connected."""


class Delta(Wire, tag="delta"):
    text: str
    n: int = 0
    """1, 2, 3... over a request's Deltas and its Done. NATS delivers at most once: a gap
    means events were lost (a NATS restart), and the router ends the request with an error
    rather than pass on a partial answer. 0: not numbered."""


class Done(Wire, tag="done"):
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    n: int = 0
    """The next number after the last Delta's (see Delta.n)."""


class Failed(Wire, tag="failed"):
    code: ErrorCode
    message: str


class Alive(Wire, tag="alive"):
    """The worker still holds the request."""


ALIVE_INTERVAL_S: Final = 1.0

Event = Delta | Done | Failed | Alive

encode = msgspec.msgpack.Encoder().encode
decode_request = msgspec.msgpack.Decoder(ChatRequest).decode
decode_cancel = msgspec.msgpack.Decoder(Cancel).decode
decode_accepted = msgspec.msgpack.Decoder(Accepted).decode
decode_event = msgspec.msgpack.Decoder(Event).decode


def model_token(model: str) -> str:
    """A model id as one subject token of [A-Za-z0-9-_]: any other character, `_` included,
    as `_` + hex bytes (never the same token for two ids)."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c == "-") else "".join(f"_{b:02x}" for b in c.encode())
        for c in model
    )


def chat_subject(model: str) -> str:
    """`llm.chat.<model>`: each worker serves the subjects of its models (one queue group
    each), so a request reaches only workers that have its model."""
    return f"{CHAT_PREFIX}.{model_token(model)}"


def cancel_subject(service: str, request_id: str) -> str:
    """`<service>.cancel.<request_id>`: the caller gave up on a request."""
    return f"{service}.cancel.{request_id}"


def alive_subject(service: str, instance: str) -> str:
    """`<service>.alive.<instance>`: answered while that worker is connected."""
    return f"{service}.alive.{instance}"


class Capabilities(Wire):
    """What a model can do beyond plain text chat. The router's routing policy is the only
    reader: it sends a request to a local model only when the model can serve all of it."""

    vision: bool = False
    """Image parts in user messages."""
    tools: bool = False
    """`tools` / tool calls and tool messages."""
    json_output: bool = False
    """`response_format` json_object / json_schema."""
    logprobs: bool = False
    """`logprobs` / `top_logprobs`."""


class ModelCard(Wire):
    """A model a worker serves, as advertised in its micro INFO metadata."""

    id: str
    context_length: int
    owned_by: str = "edge"
    created: int = 0
    device: Literal["cpu", "npu"] = "cpu"
    """Where it runs."""
    capabilities: Capabilities = Capabilities()


class LlmStats(Wire):
    """What an llm instance adds to its micro STATS (each endpoint's `data`)."""

    resident: list[str] = []
    """Models loaded now."""
    switch_s: float = 0.0
    """Seconds its last model switch took."""


models_encoder = msgspec.json.Encoder()
decode_models = msgspec.json.Decoder(list[ModelCard]).decode
