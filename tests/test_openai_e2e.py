"""The official openai SDK against router -> NATS -> llm worker, all real processes."""

import asyncio
from collections.abc import Callable

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_non_stream_matches_llama_cpp(
    client: OpenAI, reference: Callable[..., dict], model: str
) -> None:
    """A greedy answer and its usage equal what llama.cpp's own chat completion gives."""
    got = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=24, seed=1
    )
    want = reference(QUESTION, temperature=0, max_tokens=24)
    assert got.object == "chat.completion"
    assert got.id.startswith("chatcmpl-")
    assert got.model == model
    choice = got.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.message.content == want["choices"][0]["message"]["content"]
    assert choice.finish_reason == want["choices"][0]["finish_reason"]
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == (
        want["usage"]["prompt_tokens"],
        want["usage"]["completion_tokens"],
        want["usage"]["total_tokens"],
    )


def test_simple_instruction_gets_text(client: OpenAI, model: str) -> None:
    """With default sampling an instruction is answered with some text."""
    got = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello to Ada."}], max_tokens=32
    )
    assert got.choices[0].message.content.strip()
    assert got.usage.completion_tokens > 0


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks(
    client: OpenAI, reference: Callable[..., dict], model: str, include_usage: bool
) -> None:
    """Streaming gives role chunk, content chunks, finish chunk (and usage) with one id."""
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        seed=1,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = list(stream)
    want = reference(QUESTION, temperature=0, max_tokens=24)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == want["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in with_choices][-1] == want["choices"][0][
        "finish_reason"
    ]
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == want["usage"]["prompt_tokens"]
        assert chunks[-1].usage.completion_tokens == want["usage"]["completion_tokens"]
    else:
        assert all(c.usage is None for c in chunks)


def test_raw_sse_framing(http: httpx.Client, model: str) -> None:
    """On the wire: `data: {json}` events separated by blank lines, ending in `data: [DONE]`."""
    body = {"model": model, "messages": QUESTION, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_max_tokens_gives_length(client: OpenAI, model: str) -> None:
    """max_tokens=5 ends with finish_reason length and exactly 5 completion tokens."""
    got = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        temperature=0,  # sampled, an answer could end sooner
        max_tokens=5,
    )
    assert got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 5


def test_stop_sequence_stops_output(client: OpenAI, model: str) -> None:
    """A stop string cuts the output right before it, with finish_reason stop."""
    messages = [{"role": "user", "content": "List three fruits."}]
    free = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=30, seed=1
    )
    text = free.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    assert len(stop) == 4
    cut = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=30, seed=1, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


async def test_async_stream(aclient: AsyncOpenAI, model: str) -> None:
    """The async client streams the same way (greedy, on a prompt whose answer is long: a
    sampled answer to a short question may end before max_tokens)."""
    stream = await aclient.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_closing_stream_cancels_generation(
    stack, aclient: AsyncOpenAI, model: str, wait_for
) -> None:
    """Closing a stream after its first chunk stops the worker's generation; the next is served."""
    health = httpx.AsyncClient(base_url=stack.llm.url)
    before = (await health.get("/health")).json()["stats"]
    stream = await aclient.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=1500,
        stream=True,
        extra_headers={"x-request-id": "e2e-cancel"},
    )
    first = await anext(aiter(stream))
    assert first.choices[0].delta.role == "assistant"
    await stream.close()
    cancelled = wait_for(
        lambda: [
            e
            for e in stack.llm.log_events("llm.generation_cancelled")
            if e.get("request_id") == "e2e-cancel"
        ]
    )
    stopped_at = (await health.get("/health")).json()["stats"]
    assert stopped_at["busy"] is False
    assert stopped_at["cancelled"] == before["cancelled"] + 1
    assert (
        stopped_at["generated_tokens"] - before["generated_tokens"]
        == cancelled[0]["completion_tokens"]
    )
    assert cancelled[0]["completion_tokens"] < 1500
    got = await aclient.chat.completions.create(model=model, messages=QUESTION, max_tokens=4)
    assert got.usage.completion_tokens == 4
    after = (await health.get("/health")).json()["stats"]
    # the cancelled generation added nothing after it stopped: only the 4 new tokens
    assert after["generated_tokens"] == stopped_at["generated_tokens"] + 4
    await health.aclose()


async def test_concurrent_requests_served_one_at_a_time(
    stack, aclient: AsyncOpenAI, model: str
) -> None:
    """Four concurrent requests all complete; the worker's log shows strictly serial runs."""
    ids = [f"e2e-conc-{i}" for i in range(4)]
    results = await asyncio.gather(
        *(
            aclient.chat.completions.create(
                model=model, messages=QUESTION, max_tokens=6, extra_headers={"x-request-id": rid}
            )
            for rid in ids
        )
    )
    assert [r.usage.completion_tokens for r in results] == [6] * 4
    lifecycle = [
        (e["event"], e["request_id"])
        for e in stack.llm.log_events()
        if e.get("request_id") in ids
        and e["event"] in ("llm.generation_started", "llm.generation_finished")
    ]
    assert len(lifecycle) == 8
    for start, end in zip(lifecycle[::2], lifecycle[1::2], strict=True):
        assert start[0] == "llm.generation_started"
        assert end == ("llm.generation_finished", start[1])
