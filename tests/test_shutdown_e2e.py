"""Stopping an llm worker mid-generation (SIGTERM, as Docker or systemd do): what runs may
finish within the grace period; what cannot ends at once with an error event, never by the
router's idle timeout."""

import json
import signal
from pathlib import Path

import httpx
import pytest

LONG = {"role": "user", "content": "Write a very long story about a lighthouse keeper."}


def stream_and_stop(router_url: str, worker, max_tokens: int) -> list[dict | str]:
    """Stream a chat; SIGTERM the worker once the first token arrived; all events."""
    body = {"model": "smollm2-135m-instruct", "messages": [LONG], "stream": True}
    events: list[dict | str] = []
    with httpx.stream(
        "POST", f"{router_url}/v1/chat/completions", json={**body, "max_tokens": max_tokens}
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
            if len(events) == 2:  # the role chunk, then the first token
                worker.proc.popen.send_signal(signal.SIGTERM)
    return events


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
            events = stream_and_stop(router.url, worker, max_tokens)
            assert worker.proc.popen.wait(30) is not None
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
