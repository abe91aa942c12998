"""A board idles between requests: after a gap longer than twice every TTL and timeout in
its configuration, the next requests are answered like the first (the local model used to
stop answering after ~10 s of idle: its NPU lease write named a revision that had expired)."""

import time
from pathlib import Path

import httpx

# Every TTL, timeout and interval of the stack that runs while it idles, made short so that
# the gap can exceed them all. (The watchdog's stall_s and abort_grace_s time a generation
# under way, never an idle board: they have tests of their own in services/llm.)
TTLS = {
    "EDGE_LLM_LEASE_TTL_S": "1",
    "EDGE_LLM_KEEP_ALIVE_S": "1",
    "EDGE_ROUTER_IDLE_TIMEOUT_S": "3",
    "EDGE_ROUTER_ACCEPT_TIMEOUT_S": "3",
    "EDGE_ROUTER_DISCOVERY_INTERVAL_S": "0.5",
    "EDGE_HEADER_TIMEOUT_S": "3",
    "EDGE_BODY_TIMEOUT_S": "3",
    "EDGE_ROUTER_STATUS_SAMPLE_S": "1",
}
GAP_S = 2 * max(float(v) for v in TTLS.values()) + 1
BODY = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 4,
    "temperature": 0,
}


def ask(http: httpx.Client) -> tuple[int, int, str]:
    """(status of a JSON answer, status of a stream, the stream's last event)."""
    answer = http.post("/v1/chat/completions", json=BODY)
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as stream:
        last = [line for line in stream.iter_lines() if line.startswith("data: ")][-1]
    return answer.status_code, stream.status_code, last


def test_requests_after_idle_gaps_longer_than_every_ttl(launch, new_nats, tmp_path: Path) -> None:
    """Ask, idle GAP_S (twice the longest TTL, plus one), ask again, twice over: every answer
    is a 200 and every stream ends with [DONE]; the NPU lease is free at the end."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, {**nats.env, **TTLS})
        router = launch("router", tmp_path, {**nats.env, **TTLS})
        try:
            with httpx.Client(base_url=router.url, timeout=20) as http:
                rounds = [ask(http)]
                for _ in range(2):
                    time.sleep(GAP_S)  # the scenario: the board idles
                    rounds.append(ask(http))
            lease = httpx.get(f"{worker.url}/health").json()["npu_lease"]
        finally:
            router.proc.stop()
            worker.proc.stop()
    assert rounds == [(200, 200, "data: [DONE]")] * 3
    assert (lease["held"], lease["waiting"]) == ([], [])
