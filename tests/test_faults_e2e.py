"""Failures behind the router: no llm service, and a worker whose generation fails.

A real generation failure cannot be provoked in llama.cpp on demand, so a stand-in worker
joins the bus: it speaks the real llm wire protocol and fails where we tell it to.
"""

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from edge_common import wire
from edge_common.protocol import llm as llm_wire
from openai import APIError, AsyncOpenAI, InternalServerError
from stand_in import Answer, stand_in


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, launch, new_nats) -> Iterator[tuple]:
    """A nats-server and a router on it, with no llm service."""
    root: Path = tmp_path_factory.mktemp("bare")
    with new_nats(root) as nats:
        router = launch("router", root, {**nats.env, "EDGE_ROUTER_ACCEPT_TIMEOUT_S": "2"})
        try:
            yield nats, router
        finally:
            router.proc.stop()


BODY = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("model", ["auto", "local"])
def test_no_llm_service_is_503_with_retry_after(bare, model: str) -> None:
    """Without any llm worker the router answers 503 with Retry-After, and /health says so."""
    _, router = bare
    response = httpx.post(f"{router.url}/v1/chat/completions", json={**BODY, "model": model})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"]["type"] == "server_error"
    health = httpx.get(f"{router.url}/health").json()
    assert health["status"] == "degraded"
    assert health["services"]["llm"]["reachable"] is False


@pytest.fixture
async def failing_worker(bare) -> AsyncIterator[list[int]]:
    """Serves "flaky": streams `plan[0]` tokens, then reports a failure."""
    plan = [0]

    def events(_: llm_wire.ChatRequest) -> list[llm_wire.Event]:
        failed = wire.Failed(code="generation_failed", message="CUDA out of memory at 0x7f3a")
        return [*(llm_wire.Delta(text="tok ") for _ in range(plan[0])), failed]

    async with stand_in(bare[0], "flaky", events):
        yield plan


async def test_workers_with_different_models_share_a_bus(bare) -> None:
    """Two workers, each with its own model: every request reaches the one that has it."""

    def answer(name: str) -> Answer:
        return lambda _: [
            llm_wire.Delta(text=f"I am {name}"),
            llm_wire.Done(finish_reason="stop", prompt_tokens=1, completion_tokens=3),
        ]

    nats, router = bare
    async with (
        stand_in(nats, "left", answer("left")),
        stand_in(nats, "right.v2", answer("right")),
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        for model, name in [("left", "left"), ("right.v2", "right")] * 6:
            body = {**BODY, "model": model}
            reply = (await http.post("/v1/chat/completions", json=body)).json()
            assert reply["choices"][0]["message"]["content"] == f"I am {name}"


async def test_generation_error_is_500_without_internals(bare, failing_worker) -> None:
    """A worker failure is a 500 in OpenAI's shape that names the request, not the cause."""
    _, router = bare
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{router.url}/v1/chat/completions", json=BODY)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "memory" not in error["message"]
    assert "0x7f3a" not in error["message"]
    assert response.headers["x-request-id"] in error["message"]


async def test_failure_mid_stream_is_a_final_error_event(bare, failing_worker) -> None:
    """After tokens were streamed, a failure arrives as an error event the SDK raises."""
    _, router = bare
    failing_worker[0] = 2
    async with AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(**BODY, stream=True)
        seen: list[str | None] = []

        async def read_all() -> None:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content)

        with pytest.raises(APIError) as err:
            await read_all()
    assert seen == ["", "tok ", "tok "]
    assert not isinstance(err.value, InternalServerError)  # it came in-band, on a 200 stream
    assert "0x7f3a" not in str(err.value)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_hole_in_the_events_is_an_error_not_a_partial_answer(bare, stream: bool) -> None:
    """Events are numbered (NATS delivers at most once): a worker whose second event never
    arrived gives a 503 (or, once streaming, an error event), never an answer with a hole."""

    def events(_: llm_wire.ChatRequest) -> list[llm_wire.Event]:
        done = llm_wire.Done(finish_reason="stop", prompt_tokens=1, completion_tokens=3, n=4)
        return [llm_wire.Delta(text="a", n=1), llm_wire.Delta(text="c", n=3), done]

    nats, router = bare
    async with (
        stand_in(nats, "holey", events),
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        response = await http.post(
            "/v1/chat/completions", json={**BODY, "model": "holey", "stream": stream}
        )
    if stream:
        assert response.status_code == 200
        last = [line for line in response.text.splitlines() if line.startswith("data: ")][-1]
        assert json.loads(last.removeprefix("data: "))["error"]["code"] == "service_unavailable"
        assert '"c"' not in response.text
    else:
        assert response.status_code == 503
        assert "lost" in response.json()["error"]["message"]
