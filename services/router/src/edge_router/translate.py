"""OpenAI chat requests as the llm worker takes them (edge_common.protocol.llm.ChatRequest).

The routing policy sends a request to a local model only within that model's capabilities,
so here a message is its text (images were described as text before, see image_text), plus
its tool calls or the call it answers; `tools`, `tool_choice` and `response_format` become
the wire's typed fields. The request keeps them as JSON (they pass through to a cloud model
unchanged): they are read here with the types of edge_router.protocol, and checks.check has
refused what does not read.
"""

from typing import Any, Literal

import msgspec
from edge_common.protocol import llm as llm_wire

from edge_router import policy
from edge_router import protocol as p

ROLES: dict[type, Literal["system", "user", "assistant", "tool"]] = {
    p.SystemMessage: "system",
    p.DeveloperMessage: "system",
    p.UserMessage: "user",
    p.AssistantMessage: "assistant",
    p.ToolMessage: "tool",
}
"""OpenAI's message types by the wire role they play."""


def tools_of(request: p.ChatCompletionRequest) -> list[p.FunctionTool]:
    """`tools`, typed (msgspec.ValidationError if they are not OpenAI's)."""
    return msgspec.convert(request.tools or [], list[p.FunctionTool])


def tool_choice_of(request: p.ChatCompletionRequest) -> p.ToolChoice:
    """`tool_choice`, typed; absent, `auto` (OpenAI's default when there are tools)."""
    return msgspec.convert(request.tool_choice or "auto", p.ToolChoice)  # type: ignore[arg-type]


def response_format_of(request: p.ChatCompletionRequest) -> p.ResponseFormat | None:
    if request.response_format is None:
        return None
    return msgspec.convert(request.response_format, p.ResponseFormat)


def _calls(message: p.Message) -> list[llm_wire.ToolCall]:
    if not isinstance(message, p.AssistantMessage) or not message.tool_calls:
        return []
    return [
        llm_wire.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in msgspec.convert(message.tool_calls, list[p.AssistantToolCall])
    ]


def messages(request_messages: list[p.Message]) -> list[llm_wire.ChatMessage]:
    """The conversation as text, tool calls and tool results."""
    return [
        llm_wire.ChatMessage(
            role=ROLES[type(m)],
            content=policy.text_of(m),
            tool_calls=_calls(m),
            tool_call_id=m.tool_call_id if isinstance(m, p.ToolMessage) else "",
        )
        for m in request_messages
    ]


def _wire_format(fmt: p.ResponseFormat | None) -> llm_wire.ResponseFormat | None:
    if fmt is None or fmt.type == "text":
        return None
    spec = fmt.json_schema
    if fmt.type == "json_schema" and spec is not None:
        return llm_wire.ResponseFormat(
            type="json_schema", schema=spec.schema, strict=bool(spec.strict)
        )
    return llm_wire.ResponseFormat(type="json_object")


def _tool_fields(request: p.ChatCompletionRequest) -> dict[str, Any]:
    tools = [
        llm_wire.Tool(
            name=t.function.name,
            description=t.function.description,
            parameters=t.function.parameters,
        )
        for t in tools_of(request)
    ]
    if not tools:
        return {}
    choice = tool_choice_of(request)
    if isinstance(choice, p.NamedToolChoice):
        return {"tools": tools, "tool_choice": "named", "tool_name": choice.function.name}
    return {"tools": tools, "tool_choice": choice}


def to_wire(request: p.ChatCompletionRequest, model: str, request_id: str) -> llm_wire.ChatRequest:
    """A checked request (see checks.check), routed to local `model`, as the llm worker
    takes it."""
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    return llm_wire.ChatRequest(
        request_id=request_id,
        model=model,
        messages=messages(request.messages),
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=stop,
        seed=request.seed,
        response_format=_wire_format(response_format_of(request)),
        **_tool_fields(request),
    )
