"""An llm worker stopped (SIGTERM, as Docker or systemd do) or killed mid-generation, or
slow to start one: streams end as soon as the router can know, never hang, and a slow
worker is not mistaken for a dead one (it sends keepalives)."""

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from edge_common.npu_lease import NpuLease
from edge_common.stack import Proc
from nats import connect
from streaming import STREAM, stream_then


@pytest.mark.parametrize(
    ("grace_s", "max_tokens", "ends"),
    [("30", 24, "completed"), ("0.2", 2000, "stopped")],
    ids=["finishes-within-grace", "stopped-after-grace"],
)
def test_worker_shutdown_mid_stream(
    launch, new_nats, tmp_path: Path, grace_s: str, max_tokens: int, ends: str
) -> None:
    with new_nats(tmp_path) as nats:
        env = {**nats.env, "EDGE_LLM_SHUTDOWN_GRACE_S": grace_s}
        worker = launch("llm", tmp_path, env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "60"})
        try:
            sigterm = lambda: worker.proc.popen.send_signal(signal.SIGTERM)  # noqa: E731
            events, _ = stream_then(router.url, sigterm, max_tokens)
            # by its own SIGTERM handling (uvicorn re-raises the signal once shut down), not
            # a crash or the SIGKILL of stop(): also when the grace runs out
            assert worker.proc.popen.wait(30) == -signal.SIGTERM
        finally:
            router.proc.stop()
            worker.proc.stop()
    if ends == "completed":
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    else:
        error = events[-1]["error"]  # type: ignore[index]
        assert error["code"] == "service_unavailable"
        assert "shut down" in error["message"]
        assert len(events) < max_tokens
    assert [e for e in worker.log_events() if e["event"] == "llm.draining"]


async def test_a_worker_waiting_for_the_npu_is_not_taken_for_dead(
    launch, new_nats, tmp_path: Path
) -> None:
    """The NPU is held elsewhere (vision, say) for longer than the router's idle timeout:
    the worker's keepalives carry the request through the wait, and it completes."""
    with new_nats(tmp_path) as nats:
        env = {**nats.env, "EDGE_LLM_BOARD": "busy-board"}
        worker = launch("llm", tmp_path, env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "1.5"})
        nc = await connect(nats.url, **nats.creds("llm"))
        other = NpuLease(nc, board="busy-board", owner="vision")
        await other.start()
        try:
            async with httpx.AsyncClient(base_url=router.url, timeout=30) as http:
                async with other.hold("yolo"):
                    body = {**STREAM, "stream": False, "max_tokens": 4}
                    answer = asyncio.create_task(http.post("/v1/chat/completions", json=body))
                    await other.wait_until(lambda s: bool(s.waiting))  # the worker queued
                    await asyncio.sleep(3)  # the scenario: the NPU stays busy 2x idle timeout
                response = await answer
        finally:
            await other.stop()
            await nc.close()
            router.proc.stop()
            worker.proc.stop()
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4


async def npu_freed_after_router_stop(
    launch, new_nats, root: Path, router_env: dict[str, str], stop: Callable[[Proc], None]
):
    """A long stream through a bus, worker and router of its own; once the worker holds the
    NPU, `stop(router process)`. Returns the worker once the NPU is free again, which must
    be within 10 s (finishing the generation would take ~25 s)."""
    with new_nats(root) as nats:
        worker = launch("llm", root, {**nats.env, "EDGE_LLM_BOARD": "router-stop"})
        router = launch("router", root, {**nats.env, **router_env})
        nc = await connect(nats.url, **nats.creds("llm"))
        observer = NpuLease(nc, board="router-stop", owner="observer")
        await observer.start()
        try:
            async with (
                httpx.AsyncClient(base_url=router.url, timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json={**STREAM, "max_tokens": 2000}),
            ):
                await observer.wait_until(lambda s: bool(s.held))
                await asyncio.to_thread(stop, router.proc)
            async with asyncio.timeout(10):
                await observer.wait_until(lambda s: not s.held)
        finally:
            await observer.stop()
            await nc.close()
            router.proc.stop()
            worker.proc.stop()
    return worker


async def test_worker_stops_generating_when_its_router_dies(
    launch, new_nats, tmp_path: Path
) -> None:
    """kill -9 of the router mid-stream (no cancel is ever sent): the worker's next
    keepalive finds nobody listening, so it stops and frees the NPU."""
    worker = await npu_freed_after_router_stop(launch, new_nats, tmp_path, {}, Proc.kill)
    assert [e for e in worker.log_events() if e["event"] == "llm.caller_gone"]


async def test_router_shutdown_ends_streams_within_its_grace(
    launch, new_nats, tmp_path: Path
) -> None:
    """SIGTERM to the router mid-stream with a 0.5 s grace: it exits (it would otherwise
    wait ~25 s for the stream to end) and its generation is cancelled."""

    def sigterm(router: Proc) -> None:
        router.popen.send_signal(signal.SIGTERM)
        assert router.popen.wait(10) == -signal.SIGTERM  # shut down by itself, not killed

    grace = {"EDGE_ROUTER_SHUTDOWN_GRACE_S": "0.5"}
    worker = await npu_freed_after_router_stop(launch, new_nats, tmp_path, grace, sigterm)
    assert [e for e in worker.log_events() if e["event"] == "llm.generation_cancelled"]
