"""The llm protocol, per chat request (see edge_common.wire for the shared parts):

router -> `llm.chat.<model>` or `llm.chat.<model>.<board>` (request/reply, see
          chat_subject): ChatRequest, naming `stream_to`, an inbox the router already
          listens on
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

from typing import Annotated, Any, Final, Literal

import msgspec

from edge_common.wire import INT64, PROTOCOL_VERSION, Alive, Failed, Wire, model_token

SERVICE: Final = "llm"
CHAT_PREFIX: Final = "llm.chat"

MAX_STOPS: Final = 4
MAX_STOP_CHARS: Final = 512
"""Longest stop string (characters): the worker matches every stop against each token."""


class ToolCall(Wire):
    """A call the assistant made (in a message of the conversation)."""

    id: str
    name: str
    arguments: str
    """The arguments, a JSON object as text (as OpenAI carries them)."""


class ChatMessage(Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    """An assistant message's calls."""
    tool_call_id: str = ""
    """A tool message: the call it answers."""


class Tool(Wire):
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    """JSON Schema of the arguments object."""


class ResponseFormat(Wire):
    """OpenAI's `response_format` when it asks for JSON (`text` is plain chat: None)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    """json_schema: the schema the answer must validate against."""
    strict: bool = False


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
    ] = msgspec.field(default_factory=list)
    seed: INT64 | None = None
    tools: list[Tool] = msgspec.field(default_factory=list)
    tool_choice: Literal["auto", "none", "required", "named"] = "auto"
    """`named`: a call of `tool_name`, and nothing else."""
    tool_name: str = ""
    response_format: ResponseFormat | None = None


class ToolCallPiece(Wire):
    """A piece of a tool call the model is making, as OpenAI streams them: the first piece
    of call `index` names its id and function, the following ones add to its arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class Delta(Wire, tag="delta"):
    text: str
    tool_calls: list[ToolCallPiece] = msgspec.field(default_factory=list)
    n: int = 0
    """1, 2, 3... over a request's Deltas and its Done. NATS delivers at most once: a gap
    means events were lost (a NATS restart), and the router ends the request with an error
    rather than pass on a partial answer. 0: not numbered."""


class Done(Wire, tag="done"):
    finish_reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    n: int = 0
    """The next number after the last Delta's (see Delta.n)."""


Event = Delta | Done | Failed | Alive

decode_request = msgspec.msgpack.Decoder(ChatRequest).decode
decode_event = msgspec.msgpack.Decoder(Event).decode


def chat_subject(model: str, board: str = "") -> str:
    """`llm.chat.<model>`: each worker serves the subjects of its models (one queue group
    each), so a request reaches only workers that have its model; `llm.chat.<model>.<board>`
    reaches only those of one board (NATS prefers a queue subscriber on the publisher's own
    server to one behind a leaf link: a router spreads a fleet's load by naming the board)."""
    subject = f"{CHAT_PREFIX}.{model_token(model)}"
    return f"{subject}.{model_token(board)}" if board else subject


class LlmStats(Wire):
    """What an llm instance adds to its micro STATS (each endpoint's `data`)."""

    resident: list[str] = msgspec.field(default_factory=list)
    """Models loaded now."""
    switch_s: float = 0.0
    """Seconds its last model switch took."""
