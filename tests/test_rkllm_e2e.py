"""The NPU path end to end: the official SDK -> router -> llm worker on the rkllm backend,
with Rockchip's runtime replaced by the C double of rkllm.h (its own bus, worker, router)."""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import APIError, AsyncOpenAI

MODEL = "qwen-npu"


@pytest.fixture(scope="module")
def npu_stack(rkllm_files, launch, new_nats, tmp_path_factory) -> Iterator[tuple[str, object]]:
    root = Path(tmp_path_factory.mktemp("npu"))
    spec = {**rkllm_files["spec"], "id": MODEL}
    with new_nats(root) as nats:
        env = {**nats.env, "EDGE_LLM_MODELS": json.dumps([spec])}
        worker = launch("llm", root, env)
        router = launch("router", root, env)
        yield router.url, worker
        router.proc.stop()
        worker.proc.stop()


@pytest.fixture
async def client(npu_stack) -> AsyncOpenAI:
    async with AsyncOpenAI(base_url=f"{npu_stack[0]}/v1", api_key="x", max_retries=0) as c:
        yield c


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_tokens_stream_as_produced_with_usage_from_perf(client: AsyncOpenAI) -> None:
    """Tokens arrive one by one as the runtime produces them; usage is the runtime's perf
    count (which includes a special token that has no text)."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ask("tell me a story"),
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, texts, usage = [], [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
            texts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert texts == [f" t{i}" for i in range(1, 20)]
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 20)
    assert arrivals[-1] - arrivals[0] > 0.03  # the double takes 3 ms a token: not one burst


async def test_closing_the_stream_calls_rkllm_abort(client: AsyncOpenAI, npu_stack) -> None:
    """A client that hangs up makes the worker call rkllm_abort."""
    _, worker = npu_stack
    stream = await client.chat.completions.create(
        model=MODEL, messages=ask("hello"), max_tokens=900, stream=True
    )
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 2:
            break
    await stream.close()
    async with asyncio.timeout(10):
        while not worker.log_events("llm.rkllm_abort"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # another process's log: polled, no event to wait on
    assert worker.log_events("llm.rkllm_abort")[0]["rc"] == 0


async def test_runtime_error_becomes_an_error(client: AsyncOpenAI) -> None:
    """An ERROR state from the runtime before any token reaches the client as a proper error:
    a 500 answer, since the router waits for the first token before it starts a stream."""
    with pytest.raises(APIError, match="error while processing") as err:
        await client.chat.completions.create(model=MODEL, messages=ask("boom"), stream=True)
    assert err.value.code == "generation_failed"
