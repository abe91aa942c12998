"""Generation semantics above the model: stop strings, completion budget, finish reason."""

import asyncio
import contextlib

import pytest
from edge_common.wire import ChatMessage, ChatRequest, Delta, Done
from edge_llm.backends import Backend
from edge_llm.generation import Generation, StopMatcher


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        ([], ["Hel", "lo"], ["Hel", "lo"], False),
        (["END"], ["abc E", "N", "D tail"], ["abc ", "", ""], True),
        (["END"], ["abc E", "x"], ["abc ", "Ex"], False),
        (["\n\n", "###"], ["one\n", "\ntwo"], ["one", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),
    ],
    ids=["no-stops", "split-stop", "false-alarm", "two-stops", "earliest-wins"],
)
def test_stop_matcher(
    stops: list[str], pieces: list[str], emitted: list[str], stopped: bool
) -> None:
    """Text that may begin a stop string is held back; the stop string is never emitted."""
    matcher = StopMatcher(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            break
    assert out == emitted
    assert hit is stopped


def request(content: str, **kw: object) -> ChatRequest:
    return ChatRequest(
        request_id="t",
        model="smollm2-135m-instruct",
        messages=[ChatMessage(role="user", content=content)],
        stream_to="unused",
        temperature=0,
        seed=1,
        **kw,
    )


async def run(backend: Backend, req: ChatRequest) -> tuple[str, Done]:
    generation = Generation(backend, req, backend.prompt_tokens(req.messages))
    events = [e async for e in generation.events()]
    assert isinstance(events[-1], Done)
    assert all(isinstance(e, Delta) for e in events[:-1])
    assert generation.completion_tokens == events[-1].completion_tokens
    return "".join(e.text for e in events[:-1]), events[-1]


async def test_budget_gives_length(backend: Backend) -> None:
    """max_tokens=4 stops after exactly 4 tokens with finish_reason length."""
    _, done = await run(backend, request("Tell me a long story.", max_tokens=4))
    assert (done.finish_reason, done.completion_tokens) == ("length", 4)


async def test_stop_string_cuts_output(backend: Backend) -> None:
    """A stop string taken from the free output cuts it right before that string."""
    free, _ = await run(backend, request("Name three colours.", max_tokens=24))
    assert len(free) > 8
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    cut, done = await run(backend, request("Name three colours.", max_tokens=24, stop=[stop]))
    assert cut == free[: free.index(stop)]
    assert done.finish_reason == "stop"


async def test_context_window_bounds_budget(backend: Backend) -> None:
    """Without max_tokens the budget is what the context window leaves."""
    from edge_llm.generation import completion_budget

    req = request("hi")
    assert completion_budget(req, 100, 2048) == 1948
    assert completion_budget(request("hi", max_tokens=50), 100, 2048) == 50
    assert completion_budget(request("hi", max_tokens=5000), 100, 2048) == 1948


async def test_cancel_interrupts_a_long_prefill(backend: Backend) -> None:
    """Closing the stream while a long prompt is being evaluated interrupts that decode
    (llama.cpp's abort callback) instead of waiting for it; the next request is served."""
    long_prompt = backend.prompt_tokens(
        [ChatMessage(role="user", content="Summarise this. " + "The quarterly report grew. " * 300)]
    )
    assert len(long_prompt) > 1500
    before = backend.interrupted_decodes
    generation = Generation(backend, request("unused", max_tokens=50), long_prompt)
    events = generation.events()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)  # one loop turn: the first step starts the prefill thread
    first.cancel()  # as the worker does when a client goes away
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await events.aclose()
    assert backend.interrupted_decodes == before + 1
    assert generation.completion_tokens == 0
    _, done = await run(backend, request("Say hi.", max_tokens=3))
    assert done.completion_tokens == 3
