"""Admission and the NPU lease through real processes: a router with queue depth 2 in front
of the session's llm worker, which holds the board's NPU lease while it generates."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from edge_common.npu_lease import NpuLease, default_board

DEPTH = 2
LONG = {"role": "user", "content": "Write a very long story about a dragon and a knight."}


@pytest.fixture(scope="module")
def router(router_with) -> str:
    return router_with(EDGE_ROUTER_QUEUE_DEPTH=str(DEPTH)).url


@pytest.fixture
async def lease(stack) -> AsyncIterator[NpuLease]:
    """An observer of the board's lease, as the llm worker configures it."""
    nc = await nats.connect(stack.nats.url, **stack.nats.creds("llm"))
    observer = NpuLease(nc, board=default_board(), owner="observer")
    await observer.start()
    yield observer
    await observer.stop()
    await nc.close()


def body(model: str, *, stream: bool = False, max_tokens: int = 4, msg: dict = LONG) -> dict:
    return {"model": model, "messages": [msg], "max_tokens": max_tokens, "stream": stream}


async def queue_of(router_http: httpx.AsyncClient) -> dict:
    return (await router_http.get("/health")).json()["local"]["queue"]


async def until_queue(router_http: httpx.AsyncClient, **want: int) -> None:
    """Wait until the router's queue shows `want` (it offers no event to wait on)."""
    async with asyncio.timeout(20):
        while {k: (await queue_of(router_http))[k] for k in want} != want:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def first_token(response: httpx.Response) -> AsyncIterator[str]:
    """Read up to the first token; the caller keeps the returned lines to keep the stream open
    (dropping a half-read line iterator closes the connection)."""
    lines = response.aiter_lines()
    async for line in lines:
        if '"content":"' in line and '"content":""' not in line:
            break
    return lines


async def test_full_queue_and_short_deadlines_get_429_at_once(
    router_http, model: str, stack
) -> None:
    """Running 1 + waiting 2: the next gets 429 queue_full at once; so does a short deadline;
    a queued client that disconnects leaves the queue and its request never runs."""
    async with router_http.stream(
        "POST", "/v1/chat/completions", json=body(model, stream=True, max_tokens=1500)
    ) as running:
        lines = await first_token(running)
        queued = asyncio.create_task(
            router_http.post(
                "/v1/chat/completions", json=body(model), headers={"x-request-id": "queued-1"}
            )
        )
        gone = asyncio.create_task(
            router_http.post(
                "/v1/chat/completions", json=body(model), headers={"x-request-id": "gone-1"}
            )
        )
        await until_queue(router_http, running=1, waiting=2)

        started = time.perf_counter()
        full = await router_http.post("/v1/chat/completions", json=body(model))
        full_s = time.perf_counter() - started
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        assert full_s < 0.25, f"429 took {full_s * 1000:.0f} ms"

        gone.cancel()  # the client goes away while queued
        await until_queue(router_http, running=1, waiting=1)
        late = await router_http.post(
            "/v1/chat/completions", json=body(model), headers={"x-edge-deadline-s": "0.2"}
        )
        assert late.status_code == 429
        assert late.json()["error"]["code"] == "queue_wait_exceeds_deadline"
        del lines
    # closing the running stream cancels it: the queued request runs and completes
    assert (await queued).status_code == 200
    assert (await queue_of(router_http))["rejected"] >= 2
    assert not [e for e in stack.llm.log_events() if e.get("request_id") == "gone-1"]


async def test_lease_held_while_generating_and_freed_on_disconnect(
    router_http, model: str, stack, lease: NpuLease
) -> None:
    """While a stream runs the worker holds the NPU lease (shown in its /health); closing
    the stream frees the lease promptly."""
    async with router_http.stream(
        "POST", "/v1/chat/completions", json=body(model, stream=True, max_tokens=1500)
    ) as running:
        lines = await first_token(running)
        health = (await router_http.get(f"{stack.llm.url}/health")).json()["npu_lease"]
        assert [(h["model"], h["owner"].split("@")[0]) for h in health["held"]] == [(model, "llm")]
        assert lease.status().held
        closed = time.perf_counter()
        del lines
    async with asyncio.timeout(5):
        await lease.wait_until(lambda status: not status.held)
    freed_s = time.perf_counter() - closed
    assert freed_s < 1.0, f"lease freed after {freed_s * 1000:.0f} ms"
