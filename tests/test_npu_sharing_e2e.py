"""Chat and detection share the board's NPU through its lease (real llm and vision workers,
a router, a bus): with 1 slot they take turns, with 2 they run side by side."""

import asyncio
import base64
import json
from contextlib import ExitStack
from pathlib import Path

import httpx
import nats
import pytest
import skimage
from edge_common.npu_lease import LeaseStatus, NpuLease
from streaming import STREAM

CHELSEA = base64.b64encode((Path(skimage.__file__).parent / "data/chelsea.png").read_bytes())
DETECTS = 4
TTL_S = "5"
# llama.cpp on one core, as on a board (LLM on one NPU core, vision on the other); with a
# thread per core, its threads' barrier crawls whenever the CI machine is busy elsewhere
ONE_THREAD = json.dumps([{"backend": "llamacpp", "threads": 1}])


def holders(status: LeaseStatus, service: str) -> list[str]:
    return [h.owner for h in status.held if h.owner.startswith(f"{service}@")]


async def chat(http: httpx.AsyncClient) -> list[dict | str]:
    """A greedy stream holding the NPU for seconds (the detections take ~50 ms); its events."""
    events: list[dict | str] = []
    body = {**STREAM, "max_tokens": 80}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize("slots", [1, 2])
async def test_chat_and_detect_share_the_npu(launch, new_nats, tmp_path: Path, slots: int) -> None:
    """Detections sent while a chat generates: with 1 slot they wait in line (never two
    holders), with 2 they hold the NPU alongside the chat; all of them succeed."""
    board = f"shared-{slots}"
    with new_nats(tmp_path) as bus, ExitStack() as services:
        env = {
            **bus.env,
            "EDGE_BOARD": board,
            "EDGE_NPU_SLOTS": str(slots),
            "EDGE_LEASE_TTL_S": TTL_S,
        }
        started = {}
        for name, service_env in [
            ("llm", {**env, "EDGE_LLM_MODELS": ONE_THREAD}),
            ("vision", env),
            ("router", bus.env),
        ]:
            started[name] = launch(name, tmp_path, service_env)
            services.callback(started[name].proc.stop)  # stopped last started first
        nc = await nats.connect(bus.url, **bus.creds("ops"))
        observer = NpuLease(nc, board=board, owner="observer", slots=slots, ttl_s=float(TTL_S))
        await observer.start()
        seen: list[LeaseStatus] = []
        # every status the watcher shows, recorded as it comes (the check never passes)
        recorder = asyncio.create_task(observer.wait_until(lambda s: seen.append(s) or False))
        try:
            async with httpx.AsyncClient(base_url=started["router"].url, timeout=60) as http:
                generating = asyncio.create_task(chat(http))
                await asyncio.wait_for(observer.wait_until(lambda s: bool(holders(s, "llm"))), 30)
                image = {"image": "data:image/png;base64," + CHELSEA.decode()}
                detects = [http.post("/v1/vision/detect", json=image) for _ in range(DETECTS)]
                answers = await asyncio.wait_for(asyncio.gather(*detects), 60)
                events = await asyncio.wait_for(generating, 60)
        except TimeoutError:
            logs = {n: s.log_path.read_text()[-4000:] for n, s in started.items()}
            pytest.fail(f"timed out; lease statuses {seen[-6:]}; logs {logs}")
        finally:
            recorder.cancel()
            await observer.stop()
            await nc.close()

    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    for answer in answers:
        assert answer.status_code == 200, answer.text[:300]
        assert "cat" in {d["label"] for d in answer.json()["detections"]}
    assert any(holders(s, "vision") for s in seen)  # the detections did hold the NPU
    if slots == 1:
        assert max(len(s.held) for s in seen) == 1
        assert any(
            holders(s, "llm") and any(o.startswith("vision@") for o in s.waiting) for s in seen
        ), "no detection waited while the chat held the NPU"
    else:
        assert any(holders(s, "llm") and holders(s, "vision") for s in seen), (
            "chat and detection never held the NPU at the same time"
        )
