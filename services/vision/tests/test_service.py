"""The vision service as a process on a real bus: a detection through NATS as the router sends
it, bad images refused at once, and the NPU shared with other jobs through the lease."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from edge_common import wire
from edge_common.npu_lease import NpuLease
from edge_common.protocol import vision as proto
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER

MODEL = "ssd-mobilenet-v2-coco"


@pytest.fixture(scope="module")
def bus(new_nats, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with new_nats(tmp_path_factory.mktemp("vision-bus")) as nats_server:
        yield nats_server


@pytest.fixture(scope="module")
def service(bus: Any, launch, tmp_path_factory: pytest.TempPathFactory) -> Any:
    worker = launch("vision", tmp_path_factory.mktemp("vision"), {**bus.env, "EDGE_BOARD": "cam"})
    yield worker
    worker.proc.stop()


@pytest.fixture
async def router(bus: Any, service: Any) -> AsyncIterator[Client]:
    """A connection as the router has it (its user, its inboxes)."""
    nc = await nats.connect(bus.url, **bus.creds("router"))
    yield nc
    await nc.close()


async def detect(nc: Client, image: bytes, request_id: str, **options: object) -> Any:
    """Submit like the router; the reply (Accepted or an error) and, if accepted, the events
    until the end (keepalives left out)."""
    sub = await nc.subscribe(nc.new_inbox())
    request = proto.DetectRequest(
        request_id=request_id,
        model=MODEL,
        image=image,
        options=proto.DetectOptions(**options),  # type: ignore[arg-type]
        stream_to=sub.subject,
    )
    reply = await nc.request(proto.detect_subject(MODEL), wire.encode(request), timeout=10)
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        await sub.unsubscribe()
        return reply.headers[ERROR_CODE_HEADER], []
    events = []
    while not events or isinstance(events[-1], wire.Alive):
        msg = await sub.next_msg(timeout=30)
        events.append(proto.decode_event(msg.data))
        if isinstance(events[-1], wire.Alive):
            await msg.respond(b"")
    await sub.unsubscribe()
    return wire.decode_accepted(reply.data), [e for e in events if not isinstance(e, wire.Alive)]


async def test_detects_through_the_bus(router: Client, photo: Callable[[str], bytes]) -> None:
    """chelsea.png through NATS: one Detected event, numbered, with the cat where it is."""
    accepted, events = await detect(router, photo("chelsea"), "cat-1")
    assert isinstance(accepted, wire.Accepted)
    assert accepted.instance
    [detected] = events
    assert isinstance(detected, proto.Detected)
    assert detected.n == 1
    assert (detected.result.width, detected.result.height) == (451, 300)
    [cat] = [d for d in detected.result.detections if d.label == "cat"]
    x0, y0, x1, y1 = cat.box  # the cat fills the photo (test_ssd checks boxes by IoU)
    assert x1 - x0 > 0.8 * 451
    assert y1 - y0 > 0.8 * 300


@pytest.mark.parametrize(
    ("image", "code"),
    [(b"not an image", "invalid_image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 16, "invalid_image")],
    ids=["text", "truncated-png"],
)
async def test_bad_images_are_refused_at_once(router: Client, image: bytes, code: str) -> None:
    """A bad image is the caller's mistake: a micro error naming it, no job run."""
    reply, events = await detect(router, image, f"bad-{code}")
    assert (reply, events) == (code, [])


async def test_waits_for_the_npu_held_elsewhere(
    bus: Any, router: Client, photo: Callable[[str], bytes]
) -> None:
    """The board's NPU lease is held by another job (the LLM, say): the detection waits,
    keepalives flowing, and runs once it is released."""
    nc = await nats.connect(bus.url, **bus.creds("llm"))
    other = NpuLease(nc, board="cam", owner="llm")
    await other.start()
    try:
        async with other.hold("qwen"):
            task = asyncio.create_task(detect(router, photo("coffee"), "cup-1"))
            await other.wait_until(lambda s: any(o.startswith("vision@") for o in s.waiting))
            assert not task.done()
        _, events = await asyncio.wait_for(task, 30)
    finally:
        await other.stop()
        await nc.close()
    assert "cup" in {d.label for d in events[-1].result.detections}


def test_the_default_model_ships_in_the_package() -> None:
    """The default model ships inside the package (what the service loads with no config)."""
    from edge_vision.catalog import default_model

    assert Path(default_model().path).is_file()
