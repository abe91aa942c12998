"""OpenAI chat requests as the llm worker takes them (edge_common.wire.ChatRequest).

Only what a local text model can serve is translated: the routing policy sends a request to
a local model only within that model's capabilities (no images, tools or tool messages for a
text model), so here a message is its text.
"""

from typing import Literal

from edge_common.protocol import llm as llm_wire

from edge_router import policy
from edge_router import protocol as p

ROLES: dict[type, Literal["system", "user", "assistant"]] = {
    p.SystemMessage: "system",
    p.DeveloperMessage: "system",
    p.UserMessage: "user",
    p.AssistantMessage: "assistant",
}
"""OpenAI's message types by the wire role they play; others (tool messages) are left out."""


def messages(request_messages: list[p.Message]) -> list[llm_wire.ChatMessage]:
    """The conversation as text."""
    return [
        llm_wire.ChatMessage(role=ROLES[type(m)], content=policy.text_of(m))
        for m in request_messages
        if type(m) in ROLES
    ]


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
    )
