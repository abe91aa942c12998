"""OpenAI answers from llm wire events (chunks, a whole completion), and cloud streams with
the usage chunk the router asked for on the client's behalf taken out.

The local event stream is Delta* then Done (llm_client.Events); a Delta's tool-call pieces
become OpenAI's streamed `tool_calls` deltas, or the message's `tool_calls`. Done carries the
token counts, which become OpenAI usage and go to an `on_usage` sink (metrics, rate limits).
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import msgspec
from edge_common.protocol import llm as llm_wire

from edge_router import protocol as p
from edge_router.llm_client import Events

UsageSink = Callable[[p.Usage], None]
"""Hears the token counts of a generation or a cloud stream."""


def usage(done: llm_wire.Done) -> p.Usage:
    return p.Usage(
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        total_tokens=done.prompt_tokens + done.completion_tokens,
    )


def _ignore(_: p.Usage) -> None:
    pass


async def started(events: Events) -> Events:
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


async def chunks(
    events: Events,
    id_: str,
    model: str,
    include_usage: bool,
    on_usage: UsageSink = _ignore,
) -> AsyncIterator[p.ChatCompletionChunk]:
    """The chunks of a streamed local answer: the role first, a chunk per Delta, the finish
    reason, then the usage chunk (`choices: []`) if the client asked for it."""
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
        if isinstance(event, llm_wire.Delta):
            if event.text:
                yield chunk(p.ChunkDelta(content=event.text))
            for piece in event.tool_calls:  # one piece a chunk, as OpenAI streams them
                yield chunk(p.ChunkDelta(tool_calls=[_chunk_call(piece)]))
        else:
            on_usage(usage(event))
            yield chunk(p.ChunkDelta(), event.finish_reason)
            if include_usage:
                yield p.ChatCompletionChunk(
                    id=id_, created=created, model=model, choices=[], usage=usage(event)
                )


def _chunk_call(piece: llm_wire.ToolCallPiece) -> p.ChunkToolCall:
    """A tool-call piece as OpenAI streams it: the first names id, type and function."""
    if piece.id:
        return p.ChunkToolCall(
            index=piece.index,
            id=piece.id,
            type="function",
            function=p.ChunkFunction(name=piece.name, arguments=piece.arguments),
        )
    return p.ChunkToolCall(index=piece.index, function=p.ChunkFunction(arguments=piece.arguments))


async def collect(events: Events, model: str, request_id: str) -> p.ChatCompletion:
    """A local answer as one completion (tool calls assembled from their pieces; content
    null when the model only called tools, as OpenAI answers)."""
    text: list[str] = []
    calls: dict[int, tuple[str, str, list[str]]] = {}  # index -> (id, name, arguments)
    done: llm_wire.Done | None = None
    async for event in events:
        if isinstance(event, llm_wire.Delta):
            text.append(event.text)
            for piece in event.tool_calls:
                calls.setdefault(piece.index, (piece.id, piece.name, []))[2].append(piece.arguments)
        else:
            done = event
    assert done is not None  # the event stream ends with Done or raises
    content = "".join(text)
    message = p.ResponseMessage(content=content)
    if calls:
        message = p.ResponseMessage(
            content=content or None,
            tool_calls=[
                p.ToolCall(id=id_, function=p.FunctionCall(name=name, arguments="".join(args)))
                for id_, name, args in (calls[i] for i in sorted(calls))
            ],
        )
    return p.ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=p.now(),
        model=model,
        choices=[p.Choice(message=message, finish_reason=done.finish_reason)],
        usage=usage(done),
    )


async def usage_taken(payloads: AsyncIterator[bytes], on_usage: UsageSink) -> AsyncIterator[bytes]:
    """A cloud stream with the usage chunk we asked for on the client's behalf: the usage
    goes to `on_usage`, the chunk (`choices: []`) not to the client, who did not ask."""
    async with aclosing(payloads):
        async for payload in payloads:
            if b'"usage"' in payload:
                with contextlib.suppress(msgspec.DecodeError):  # relayed as it is then
                    chunk = p.read_answer(payload)
                    if chunk.usage and not chunk.choices:
                        on_usage(chunk.usage)
                        continue
            yield payload
