"""The llm service's NATS protocol: accept or refuse at once, one generation at a time, cancel."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import nats
import pytest
from edge_common import bus, wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import llm as llm_wire
from edge_common.residency import Residency
from edge_common.worker import STALLED
from edge_llm.backends import Backend, create_backend
from edge_llm.server import LlmServer
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER
from prometheus_client import REGISTRY


@pytest.fixture(scope="module")
def own_bus(new_nats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A bus of these tests' own: no other worker may join the queue groups they use."""
    with new_nats(tmp_path_factory.mktemp("bus")) as nats_server:
        yield nats_server


@asynccontextmanager
async def serving(
    nats_server: Any, backend: Backend, stall_s: float = 30, abort_grace_s: float = 5
) -> AsyncIterator[tuple[Client, LlmServer]]:
    """An LlmServer for `backend` on `nats_server`, and a client connected as the router."""
    password = nats_server.passwords["EDGE_LLM_NATS_PASSWORD"]
    async with bus.connect(nats_server.url, "llm", password) as nc:
        lease = NpuLease(nc, board="llm-unit", owner="llm-test")
        await lease.start()
        residency = Residency({backend.card.id: backend}, pinned=backend.card.id)
        await residency.ensure(backend.card.id)
        server = LlmServer(nc, residency, lease, stall_s=stall_s, abort_grace_s=abort_grace_s)
        listening = contextlib.AsyncExitStack()
        await server.worker.start(listening, grace_s=0)
        async with bus.serve(
            nc,
            name="llm",
            version="0.0.1",
            description="test",
            endpoints={llm_wire.chat_subject(backend.card.id): server.on_chat},
        ):
            client = await nats.connect(nats_server.url, **nats_server.creds("router"))
            yield client, server
            await client.close()
            if not nc.is_connected:  # the test stopped the bus: nothing can be undone there
                with contextlib.suppress(ConnectionResetError):
                    await nc.close()
                return
        await listening.aclose()
        await lease.stop()


@pytest.fixture
async def served(own_bus, backend: Backend) -> AsyncIterator[tuple[Client, LlmServer]]:
    async with serving(own_bus, backend) as running:
        yield running


MODEL = "smollm2-135m-instruct"
SUBJECT = llm_wire.chat_subject(MODEL)  # the served model's: the worker still checks the model


def chat(request_id: str, stream_to: str, **kw: object) -> llm_wire.ChatRequest:
    fields = {
        "model": MODEL,
        "messages": [llm_wire.ChatMessage(role="user", content="Write a long story about a cat.")],
        "temperature": 0,
        **kw,
    }
    return llm_wire.ChatRequest(request_id=request_id, stream_to=stream_to, **fields)  # type: ignore[arg-type]


async def submit(
    nc: Client, request: llm_wire.ChatRequest, subject: str = SUBJECT
) -> nats.aio.msg.Msg:
    return await nc.request(subject, wire.encode(request), timeout=5)


async def events_until_end(sub) -> list[llm_wire.Event]:
    events: list[llm_wire.Event] = []
    while not events or isinstance(events[-1], llm_wire.Delta):
        events.append(await next_event(sub))
    return events


async def next_event(sub) -> llm_wire.Event:
    """The next event that is not a keepalive."""
    while isinstance(
        event := llm_wire.decode_event((await sub.next_msg(timeout=30)).data), wire.Alive
    ):
        pass
    return event


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"model": "no-such-model"}, "model_not_found"),
        ({"max_tokens": 5000}, "context_length_exceeded"),
        (
            {"messages": [llm_wire.ChatMessage(role="user", content="word " * 3000)]},
            "context_length_exceeded",
        ),
        ({"stop": ["x" * (llm_wire.MAX_STOP_CHARS + 1)]}, "invalid_request"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_request"),
    ],
    ids=[
        "unknown-model",
        "budget-beyond-window",
        "prompt-beyond-window",
        "stop-too-long",
        "too-many-stops",
    ],
)
async def test_refusals_come_back_at_once(served, overrides: dict, code: str) -> None:
    """Requests the worker cannot serve are refused in the reply, with a wire error code."""
    nc, server = served
    reply = await submit(nc, chat("refused", "unused", **overrides))
    assert reply.headers[ERROR_CODE_HEADER] == code
    assert server.stats().queued == 0


async def test_garbage_request_is_invalid(served) -> None:
    """Bytes that are not a ChatRequest are refused as invalid_request."""
    nc, _ = served
    reply = await nc.request(SUBJECT, b"\x93garbage", timeout=5)
    assert reply.headers[ERROR_CODE_HEADER] == "invalid_request"


async def test_generations_run_one_at_a_time_in_order(served) -> None:
    """Three requests sent together are accepted at once and generate strictly in turn."""
    nc, server = served
    subs = [await nc.subscribe(nc.new_inbox()) for _ in range(3)]
    replies = await asyncio.gather(
        *(submit(nc, chat(f"fifo-{i}", s.subject, max_tokens=6)) for i, s in enumerate(subs))
    )
    assert all(wire.decode_accepted(r.data).prompt_tokens > 0 for r in replies)
    assert server.stats().queued + server.stats().busy == 3
    done_order = []

    async def collect(i: int) -> None:
        events = await events_until_end(subs[i])
        assert isinstance(events[-1], llm_wire.Done)
        done_order.append(i)

    await asyncio.gather(*(collect(i) for i in range(3)))
    assert done_order == [0, 1, 2]


async def test_cancel_stops_running_generation(served) -> None:
    """A cancel mid-generation ends it without a Done, and the worker is free again."""
    nc, server = served
    sub = await nc.subscribe(nc.new_inbox())
    before = server.stats()
    await submit(nc, chat("running", sub.subject, max_tokens=1500))
    first = await next_event(sub)
    assert isinstance(first, llm_wire.Delta)
    await cancel(nc, "running")
    reply = await submit(nc, chat("after", sub.subject, max_tokens=3))
    assert not reply.headers
    events = await events_until_end(sub)
    # whatever the cancelled run had sent before stopping ends without a Done of its own
    dones = [e for e in events if isinstance(e, llm_wire.Done)]
    assert len(dones) == 1
    assert dones[0].completion_tokens == 3
    after = server.stats()
    assert after.cancelled == before.cancelled + 1
    assert after.completed == before.completed + 1
    assert after.generated_tokens - before.generated_tokens < 1500
    assert not after.busy


async def test_cancel_before_request_and_while_queued(served) -> None:
    """A cancel that overtakes its request, or hits it while queued, means it never runs."""
    nc, server = served
    before = server.stats()
    sub = await nc.subscribe(nc.new_inbox())
    await cancel(nc, "early")
    await nc.flush()
    await submit(nc, chat("blocker", sub.subject, max_tokens=20))
    await submit(nc, chat("early", sub.subject, max_tokens=20))
    await submit(nc, chat("queued", sub.subject, max_tokens=20))
    await cancel(nc, "queued")
    events = await events_until_end(sub)
    assert isinstance(events[-1], llm_wire.Done)
    assert events[-1].completion_tokens == 20
    # the blocker is done; nothing else may arrive: flush a no-op round trip through the worker
    probe = await submit(nc, chat("probe", sub.subject, max_tokens=1))
    assert not probe.headers
    tail = await events_until_end(sub)
    assert len(tail) <= 2
    assert tail[-1].completion_tokens == 1  # type: ignore[union-attr]
    after = server.stats()
    assert after.cancelled - before.cancelled == 2
    assert after.generated_tokens - before.generated_tokens == 21


def test_wire_roundtrip_keeps_unknown_fields_out() -> None:
    """Old peers decode messages from newer ones: unknown fields are ignored."""
    newer = msgspec.msgpack.encode(
        {
            "type": "done",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "future_field": [1, 2],
        }
    )
    assert llm_wire.decode_event(newer) == llm_wire.Done(
        finish_reason="stop", prompt_tokens=1, completion_tokens=2
    )


async def ask(nc: Client, request: llm_wire.ChatRequest) -> tuple[list[llm_wire.Event], float]:
    """Submit to the request's model; its events until Done or Failed, and the seconds taken."""
    sub = await nc.subscribe(nc.new_inbox())
    started = time.monotonic()
    request = msgspec.structs.replace(request, stream_to=sub.subject)
    reply = await submit(nc, request, llm_wire.chat_subject(request.model))
    assert not reply.headers, reply.headers
    events = await events_until_end(sub)
    await sub.unsubscribe()
    return events, time.monotonic() - started


async def cancel(nc: Client, request_id: str) -> None:
    """What the router sends when its client went away."""
    await nc.publish(
        wire.cancel_subject("llm", request_id), wire.encode(wire.Cancel(request_id=request_id))
    )


def text(events: list[llm_wire.Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, llm_wire.Delta))


async def test_longest_stop_string_is_matched_cheaply(served) -> None:
    """A stop string of the wire's maximum length is served like any other (the worker stays
    responsive: the generation ends with Done)."""
    nc, _ = served
    events, _ = await ask(nc, chat("long-stop", "", max_tokens=40, stop=["ab" * 256]))
    assert isinstance(events[-1], llm_wire.Done)
    assert events[-1].completion_tokens == 40


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63 - 1])
async def test_any_int64_seed_is_reproducible(served, seed: int) -> None:
    """Every int64 seed is accepted and sampling with it (temperature 1) repeats exactly;
    -1 and 2**63-1 used to land on llama.cpp's "random seed" value."""
    nc, _ = served
    req = chat("seeded", "", max_tokens=12, temperature=1.0, seed=seed)
    first, _ = await ask(nc, req)
    second, _ = await ask(nc, req)
    assert isinstance(first[-1], llm_wire.Done)
    assert text(first) == text(second)


NPU = "npu-model"
FRESH = [" t1", " t2", " t3", " t4"]
"""What the double answers `hello` with max_tokens=5 on an empty KV cache."""


async def test_a_long_prefill_is_no_stall(own_bus, backend: Backend) -> None:
    """A prompt whose prefill takes longer than stall_s (here 1 s) completes: llama.cpp shows
    it is computing (its abort callback runs during every graph compute), and that counts as
    progress, so the watchdog fires only when the runtime is really stuck."""
    long = chat(
        "long-prefill", "", messages=[llm_wire.ChatMessage(role="user", content="hi " * 400)]
    )
    async with serving(own_bus, backend, stall_s=1.0) as (nc, server):
        events, seconds = await ask(nc, msgspec.structs.replace(long, max_tokens=2))
    assert isinstance(events[-1], llm_wire.Done), events[-1]
    assert events[-1].prompt_tokens > 400
    assert seconds > 1.0  # the scenario: the prefill alone outlasted stall_s
    assert server.stats().failed == 0


def npu_chat(request_id: str, content: str, **kw: object) -> llm_wire.ChatRequest:
    messages = [llm_wire.ChatMessage(role="user", content=content)]
    return llm_wire.ChatRequest(request_id=request_id, model=NPU, messages=messages, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def npu_served(own_bus, double: Any) -> AsyncIterator[tuple[Client, LlmServer]]:
    """A worker on the RKLLM double whose watchdog aborts after 1 s without a token."""
    backend = create_backend(double.spec())
    async with serving(own_bus, backend, stall_s=1.0, abort_grace_s=5) as running:
        yield running
    backend.unload()


def watchdog_count(action: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "edge_worker_watchdog_total", {"service": "llm", "action": action}
        )
        or 0.0
    )


async def test_watchdog_aborts_a_stalled_generation(npu_served, double: Any) -> None:
    """A runtime that stops producing tokens is aborted after stall_s: the caller gets
    Failed(unavailable) promptly, it is counted, and the next request is served afresh."""
    nc, server = npu_served
    before = watchdog_count("abort")
    events, seconds = await ask(nc, npu_chat("stalls", "stall", max_tokens=50))
    assert events[-1] == wire.Failed(code="unavailable", message=STALLED.format(stall_s=1.0))
    assert 1.0 <= seconds < 4.0
    assert double.record()["aborted"] == "1"
    assert watchdog_count("abort") == before + 1
    assert server.stats().failed == 1
    after, _ = await ask(nc, npu_chat("next", "hello", max_tokens=5))
    assert text(after) == "".join(FRESH)
    assert isinstance(after[-1], llm_wire.Done)


async def test_no_context_bleed_on_the_npu(npu_served, double: Any) -> None:
    """After a cancelled and after a failed generation, the same greedy request gets exactly
    a fresh runtime's answer (the KV cache is cleared), seeds of any int64 included."""
    nc, _ = npu_served
    hello = npu_chat("hello", "hello", max_tokens=5, temperature=0, seed=-(2**63))
    fresh, _ = await ask(nc, hello)
    assert text(fresh) == "".join(FRESH)
    sub = await nc.subscribe(nc.new_inbox())
    await submit(
        nc,
        npu_chat("long", "tell me a story", max_tokens=900, stream_to=sub.subject),
        llm_wire.chat_subject(NPU),
    )
    assert isinstance(await next_event(sub), llm_wire.Delta)
    await cancel(nc, "long")
    after_cancel, _ = await ask(nc, msgspec.structs.replace(hello, seed=2**63 - 1))
    boom, _ = await ask(nc, npu_chat("boom", "boom"))
    assert isinstance(boom[-1], wire.Failed)
    after_error, _ = await ask(nc, hello)
    assert text(after_cancel) == text(after_error) == text(fresh)
    assert double.record()["kv.clear"] != "0"  # there was something to clear


async def test_worker_off_the_bus_stops_generating(new_nats, tmp_path, double: Any) -> None:
    """When NATS goes away mid-generation, the worker aborts the generation after a couple
    of keepalive intervals (nobody can hear it) instead of holding the NPU."""
    backend = create_backend(double.spec())
    with (
        new_nats(tmp_path) as nats_server,
        contextlib.suppress(nats.errors.ConnectionClosedError),  # unregistering off the bus
    ):
        async with serving(nats_server, backend, stall_s=60) as (nc, server):
            sub = await nc.subscribe(nc.new_inbox())
            await submit(
                nc, npu_chat("orphan", "stall", stream_to=sub.subject), llm_wire.chat_subject(NPU)
            )
            async with asyncio.timeout(10):
                while not server.stats().busy:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # no event to await: the run starts in a task
            nats_server.proc.stop()
            stopped = time.monotonic()
            async with asyncio.timeout(15):
                while "aborted" not in double.record():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the double's log: polled
            aborted = time.monotonic() - stopped
            async with asyncio.timeout(15):
                while not server.stats().cancelled:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
    backend.unload()
    assert wire.ALIVE_INTERVAL_S < aborted < 5 * wire.ALIVE_INTERVAL_S
    assert not server.stats().busy
