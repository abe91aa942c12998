"""Input checks on a chat request: what no target accepts, whatever the route.

Inline images are checked here (edge_router.images); image URLs only once a route needs
their bytes (a cloud model fetches them itself).
"""

from collections.abc import Callable
from typing import TypeVar

import msgspec

from edge_router import protocol as p
from edge_router.errors import InvalidRequest, invalid_body
from edge_router.images import check_header, inline_bytes, is_url
from edge_router.settings import InputLimits
from edge_router.translate import response_format_of, tool_choice_of, tools_of

T = TypeVar("T")


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
    images = 0
    for i, message in enumerate(request.messages):
        if isinstance(message, p.UserMessage) and not isinstance(message.content, str):
            for j, part in enumerate(message.content):
                if not isinstance(part, p.ImagePart):
                    continue
                images += 1
                if images > limits.max_images:
                    raise InvalidRequest(
                        f"At most {limits.max_images} images are accepted in one request.",
                        param="messages",
                        code="too_many_images",
                    )
                if not is_url(url := part.image_url.url):
                    param = f"messages[{i}].content[{j}].image_url"
                    check_header(inline_bytes(url, limits.max_image_mb, param), limits, param)
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported")
    _check_tools(request)


def _typed(read: Callable[[], T], field: str) -> T:
    """A field read with its protocol type, a failure a 400 naming the field."""
    try:
        return read()
    except msgspec.ValidationError as exc:
        error = invalid_body(exc)
        inner = error.param or ""
        error.param = field + (inner if inner.startswith("[") or not inner else f".{inner}")
        raise error from None


def _check_tools(request: p.ChatCompletionRequest) -> None:
    """`tools`, `tool_choice`, `response_format` and past tool calls of the types OpenAI
    defines (a cloud would refuse others too; a local model needs them typed). Fields past
    those are a cloud's business: they pass through (a json_schema without `json_schema`
    is any JSON object to a local model)."""
    tools = _typed(lambda: tools_of(request), "tools")
    choice = _typed(lambda: tool_choice_of(request), "tool_choice")
    _typed(lambda: response_format_of(request), "response_format")
    for i, message in enumerate(request.messages):
        if isinstance(message, p.AssistantMessage) and message.tool_calls:
            calls = message.tool_calls
            _typed(
                lambda c=calls: msgspec.convert(c, list[p.AssistantToolCall]),  # type: ignore[misc]
                f"messages[{i}].tool_calls",
            )
    if isinstance(choice, p.NamedToolChoice) and choice.function.name not in {
        t.function.name for t in tools
    }:
        raise InvalidRequest(
            f"tool_choice names the function `{choice.function.name}`, which is not in tools.",
            param="tool_choice",
            code="invalid_value",
        )
