"""Chat completions: OpenAI request in, `chat.completion` or a stream of chunks out.

Pure of HTTP: returns values and async iterators of response objects; api.py frames them.
"""

from collections.abc import AsyncIterator

from edge_common import wire

from edge_router import protocol as p
from edge_router.errors import InvalidRequest
from edge_router.llm_client import LlmClient


def _text(content: p.Text | list[p.ContentPart] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if isinstance(part, p.ImagePart):
            raise InvalidRequest(
                "This model does not accept images.",
                param=f"messages[{index}].content",
                code="image_not_supported",
            )
        parts.append(part.text)
    return "\n".join(parts)


def _messages(messages: list[p.Message]) -> list[wire.ChatMessage]:
    out = []
    for i, m in enumerate(messages):
        match m:
            case p.SystemMessage() | p.DeveloperMessage():
                out.append(wire.ChatMessage(role="system", content=_text(m.content, i)))
            case p.UserMessage():
                out.append(wire.ChatMessage(role="user", content=_text(m.content, i)))
            case p.AssistantMessage():
                if m.tool_calls:
                    raise _unsupported("tool calls", f"messages[{i}].tool_calls")
                out.append(wire.ChatMessage(role="assistant", content=_text(m.content, i)))
            case p.ToolMessage():
                raise _unsupported("tool messages", f"messages[{i}].role")
    return out


def _unsupported(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"Local models do not support {what}.", param=param, code="unsupported")


def to_wire(request: p.ChatCompletionRequest, request_id: str) -> wire.ChatRequest:
    if request.n != 1:
        raise InvalidRequest("Only n=1 is supported.", param="n", code="unsupported")
    for name in ("tools", "response_format", "logprobs"):
        if getattr(request, name):
            raise _unsupported(name, name)
    both = request.max_tokens and request.max_completion_tokens
    if both and request.max_tokens != request.max_completion_tokens:
        raise InvalidRequest(
            "Set max_tokens or max_completion_tokens, not both.", param="max_tokens"
        )
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    return wire.ChatRequest(
        request_id=request_id,
        model=request.model,
        messages=_messages(request.messages),
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=stop,
        seed=request.seed,
    )


class ChatService:
    def __init__(self, llm: LlmClient) -> None:
        self._llm = llm

    async def complete(self, request: p.ChatCompletionRequest, request_id: str) -> p.ChatCompletion:
        _, events = await self._llm.stream_chat(to_wire(request, request_id))
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
            model=request.model,
            choices=[
                p.Choice(
                    message=p.ResponseMessage(content="".join(text)),
                    finish_reason=done.finish_reason,
                )
            ],
            usage=_usage(done),
        )

    async def stream(
        self, request: p.ChatCompletionRequest, request_id: str
    ) -> AsyncIterator[p.ChatCompletionChunk]:
        """Submits at once (errors raise before the first chunk); returns the chunk stream."""
        _, events = await self._llm.stream_chat(to_wire(request, request_id))
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return _chunks(events, f"chatcmpl-{request_id}", request.model, include_usage)


def _usage(done: wire.Done) -> p.Usage:
    return p.Usage(
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        total_tokens=done.prompt_tokens + done.completion_tokens,
    )


async def _chunks(
    events: AsyncIterator[wire.Delta | wire.Done], id_: str, model: str, include_usage: bool
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
            yield chunk(p.ChunkDelta(), event.finish_reason)
            if include_usage:
                yield p.ChatCompletionChunk(
                    id=id_, created=created, model=model, choices=[], usage=_usage(event)
                )
