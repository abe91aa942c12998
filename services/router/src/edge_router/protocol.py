"""OpenAI's chat completions wire format (request and response), as msgspec Structs.

Field names, nesting and defaults follow OpenAI's API so that any OpenAI client works
unchanged. Response objects are encoded with every field present, nulls included, as
OpenAI does.
"""

import time
from typing import Annotated, Any, Literal

import msgspec
from edge_common.protocol.llm import MAX_STOP_CHARS, MAX_STOPS
from edge_common.protocol.rag import CollectionName, FilterValue, SearchMode
from edge_common.wire import INT64
from msgspec import Meta

# --- request ---------------------------------------------------------------------------


class Struct(msgspec.Struct, kw_only=True):
    """Base of request-side types."""


class TextPart(Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class ImageUrl(Struct, kw_only=True):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(Struct, tag="image_url", tag_field="type", kw_only=True):
    image_url: ImageUrl


ContentPart = TextPart | ImagePart
Text = str | list[TextPart]


class SystemMessage(Struct, tag="system", tag_field="role", kw_only=True):
    content: Text
    name: str | None = None


class DeveloperMessage(Struct, tag="developer", tag_field="role", kw_only=True):
    content: Text
    name: str | None = None


class UserMessage(Struct, tag="user", tag_field="role", kw_only=True):
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(Struct, tag="assistant", tag_field="role", kw_only=True):
    content: Text | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ToolMessage(Struct, tag="tool", tag_field="role", kw_only=True):
    content: Text
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


StopString = Annotated[str, Meta(max_length=MAX_STOP_CHARS)]


class Grounding(Struct, kw_only=True, forbid_unknown_fields=True):
    """Extension `rag`: answer from a collection's best chunks, with `citations`."""

    collection: CollectionName
    top_k: Annotated[int, Meta(ge=1, le=20)] = 4
    filter: dict[str, FilterValue] = msgspec.field(default_factory=dict)
    mode: SearchMode = "dense"
    score_threshold: float | None = None


class FunctionDef(Struct, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None


class FunctionTool(Struct, kw_only=True):
    """An entry of `tools` (read by checks and translate; the request keeps the JSON)."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Struct, kw_only=True):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class JsonSchemaSpec(Struct, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str = ""
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True):
    """`response_format`, as read by checks and translate."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class CalledFunction(Struct, kw_only=True):
    name: str
    arguments: str


class AssistantToolCall(Struct, kw_only=True):
    """An entry of an assistant message's `tool_calls`, as read by translate."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatCompletionRequest(Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = False
    """null is false, as OpenAI takes it (so is n: null one)."""
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    # bounded as the worker takes them: its stop matching costs grow with their length
    stop: StopString | Annotated[list[StopString], Meta(max_length=MAX_STOPS)] | None = None
    seed: INT64 | None = None
    """OpenAI's seed is an int64."""
    # n > 1 gets our clear "only n=1" error (checks.check), and the schema says so
    n: Annotated[int, Meta(ge=1, extra_json_schema={"maximum": 1})] | None = 1
    user: str | None = None
    # Passed through to cloud models; local models take them when their capabilities say so
    # (edge_router.policy decides, with a clear error when no model can).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    rag: Grounding | None = None
    """Extension (the openai SDK sends it with `extra_body`): ground the answer in a RAG
    collection (edge_router.grounding); never sent to a cloud model as a field."""


# --- response --------------------------------------------------------------------------


class Out(msgspec.Struct, kw_only=True):
    """Base of response-side types."""


FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class Usage(Out, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(Out, kw_only=True):
    name: str
    arguments: str
    """A JSON object, as text."""


class ToolCall(Out, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(Out, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET
    """Present only when the model called tools (content is null then, or its text)."""


class Choice(Out, kw_only=True):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(Out, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ChunkFunction(Out, omit_defaults=True, kw_only=True):
    arguments: str
    """Always sent (no default): "" with the name, then the arguments in pieces."""
    name: str | None = None


class ChunkToolCall(Out, omit_defaults=True, kw_only=True):
    """A piece of a streamed tool call: index, id, type and name first, then arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction


class ChunkDelta(Out, omit_defaults=True, kw_only=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(Out, kw_only=True):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Out, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCapabilities(Out, kw_only=True):
    vision: bool = False
    tools: bool = False
    json: bool = False
    """`response_format` json_object / json_schema."""
    embeddings: bool = False


class ModelObject(Out, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    route: Literal["auto", "local", "cloud"]
    """Extension: where the model runs (`auto` lets the router decide)."""
    task: Literal["chat", "detection", "embedding"] = "chat"
    """Extension: what it serves (`detection`: POST /v1/vision/detect, `embedding`:
    POST /v1/embeddings)."""
    dimension: int | None = None
    """Extension: an embedding model's vector size."""
    context_window: int | None = None
    """Extension: a chat model's context window in tokens (None: unknown, a cloud's)."""
    capabilities: ModelCapabilities | None = None
    """Extension: what a chat or embedding model takes beyond text (None: an alias)."""
    runs_on: Literal["npu", "cpu", "cloud"] | None = None
    """Extension: where the model runs (None: an alias, decided per request)."""
    loaded: bool | None = None
    """Extension: a local model is resident now (no load before its first token);
    None for cloud models and aliases."""


class ModelList(Out, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class _Text(msgspec.Struct):
    content: str | None = None


class _ChoiceView(msgspec.Struct):
    delta: _Text | None = None
    message: _Text | None = None


class AnswerView(msgspec.Struct):
    """What the gateway reads of an answer or a stream chunk, ours or an upstream's."""

    usage: Usage | None = None
    choices: list[_ChoiceView] = msgspec.field(default_factory=list)

    def texts(self) -> list[str]:
        parts = (c.delta or c.message for c in self.choices)
        return [t.content for t in parts if t and t.content]


read_answer = msgspec.json.Decoder(AnswerView).decode
encode = msgspec.json.Encoder().encode


def now() -> int:
    return int(time.time())
