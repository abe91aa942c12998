"""The llm service's NATS protocol: accept or refuse at once, one generation at a time, cancel."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import nats
import pytest
from edge_common import bus, wire
from edge_common.npu_lease import NpuLease
from edge_llm.backends import Backend
from edge_llm.residency import Residency
from edge_llm.server import LlmServer
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER


@pytest.fixture(scope="module")
def own_bus(new_nats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A bus of these tests' own: no other worker may join the queue groups they use."""
    with new_nats(tmp_path_factory.mktemp("bus")) as nats_server:
        yield nats_server


@pytest.fixture
async def served(own_bus, backend: Backend) -> AsyncIterator[tuple[Client, LlmServer]]:
    password = own_bus.passwords["EDGE_LLM_NATS_PASSWORD"]
    async with bus.connect(own_bus.url, "llm", password) as nc:
        lease = NpuLease(nc, board="llm-unit", owner="llm-test")
        await lease.start()
        residency = Residency({backend.card.id: backend}, pinned=backend.card.id)
        await residency.ensure(backend.card.id)
        server = LlmServer(nc, residency, lease)
        sub = await nc.subscribe(f"{wire.CANCEL_PREFIX}.*", cb=server.on_cancel)
        async with bus.serve(
            nc,
            name="llm",
            version="0.0.1",
            description="test",
            endpoints={wire.chat_subject(backend.card.id): server.on_chat},
        ):
            client = await nats.connect(own_bus.url, **own_bus.creds("router"))
            yield client, server
            await client.drain()
        await sub.unsubscribe()


MODEL = "smollm2-135m-instruct"
SUBJECT = wire.chat_subject(MODEL)  # the served model's: the worker still checks the model


def chat(request_id: str, stream_to: str, **kw: object) -> wire.ChatRequest:
    fields = {
        "model": MODEL,
        "messages": [wire.ChatMessage(role="user", content="Write a long story about a cat.")],
        "temperature": 0,
        **kw,
    }
    return wire.ChatRequest(request_id=request_id, stream_to=stream_to, **fields)  # type: ignore[arg-type]


async def submit(nc: Client, request: wire.ChatRequest) -> nats.aio.msg.Msg:
    return await nc.request(SUBJECT, wire.encode(request), timeout=5)


async def events_until_end(sub) -> list[wire.Event]:
    events: list[wire.Event] = []
    while not events or isinstance(events[-1], wire.Delta):
        events.append(await next_event(sub))
    return events


async def next_event(sub) -> wire.Event:
    """The next event that is not a keepalive."""
    while isinstance(event := wire.decode_event((await sub.next_msg(timeout=30)).data), wire.Alive):
        pass
    return event


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"model": "no-such-model"}, "model_not_found"),
        ({"max_tokens": 5000}, "context_length_exceeded"),
        (
            {"messages": [wire.ChatMessage(role="user", content="word " * 3000)]},
            "context_length_exceeded",
        ),
    ],
    ids=["unknown-model", "budget-beyond-window", "prompt-beyond-window"],
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
        assert isinstance(events[-1], wire.Done)
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
    assert isinstance(first, wire.Delta)
    await nc.publish(wire.cancel_subject("running"), wire.encode(wire.Cancel(request_id="running")))
    reply = await submit(nc, chat("after", sub.subject, max_tokens=3))
    assert not reply.headers
    events = await events_until_end(sub)
    # whatever the cancelled run had sent before stopping ends without a Done of its own
    dones = [e for e in events if isinstance(e, wire.Done)]
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
    await nc.publish(wire.cancel_subject("early"), wire.encode(wire.Cancel(request_id="early")))
    await nc.flush()
    await submit(nc, chat("blocker", sub.subject, max_tokens=20))
    await submit(nc, chat("early", sub.subject, max_tokens=20))
    await submit(nc, chat("queued", sub.subject, max_tokens=20))
    await nc.publish(wire.cancel_subject("queued"), wire.encode(wire.Cancel(request_id="queued")))
    events = await events_until_end(sub)
    assert isinstance(events[-1], wire.Done)
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
    assert wire.decode_event(newer) == wire.Done(
        finish_reason="stop", prompt_tokens=1, completion_tokens=2
    )
