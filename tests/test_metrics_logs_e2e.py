"""Observability through real processes: Prometheus /metrics parsed by prometheus-client,
and one `request.completed` log event per request, with nothing secret or private in logs."""

import json
from pathlib import Path

import httpx
from api_keys import make_key
from prometheus_client.parser import text_string_to_metric_families

SECRET_PROMPT = "my passport number is X1234567"


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_move(stack, http: httpx.Client, model: str) -> None:
    """Router and worker serve Prometheus text; request, token and latency series move."""
    key = ("edge_requests_total", (("model", model), ("route", "local"), ("status", "200")))
    before = samples(stack.router.url)
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    after = samples(stack.router.url)
    assert after[key] == before.get(key, 0) + 1
    tokens = ("edge_tokens_total", (("kind", "completion"), ("route", "local")))
    assert after[tokens] == before.get(tokens, 0) + 3
    assert after[("edge_request_seconds_count", (("route", "local"),))] >= 1
    assert ("edge_queue_waiting", ()) in after
    wait = ("edge_queue_wait_seconds_count", ())
    assert after[wait] == before.get(wait, 0) + 1
    assert after[("edge_npu_temperature_celsius", ())] == 47.5
    worker = samples(stack.llm.url)
    assert worker[("process_resident_memory_bytes", ())] > 0
    assert worker[("edge_llm_generations_total", (("model", model), ("outcome", "completed")))] >= 1
    assert worker[("edge_worker_lease_wait_seconds_count", (("service", "llm"),))] >= 1
    assert worker[("edge_llm_resident_models", ())] == 1


def stream(url: str, body: dict, headers: dict[str, str]) -> str:
    """A streamed chat completion: the text it carried."""
    text = []
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_request_logs_carry_the_request_id_but_no_key_or_prompt(
    stack, router_with, tmp_path: Path, model: str
) -> None:
    """With keys on and the router logging at debug: one request.completed event with the
    key's name, route, model, status, timings and tokens; the same request id in router and
    worker logs; neither the key nor the prompt text in any log."""
    key = make_key(tmp_path / "keys.json", "observer")
    router = router_with(EDGE_ROUTER_KEYS_FILE=str(tmp_path / "keys.json"), EDGE_LOG_LEVEL="debug")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "max_tokens": 3,
        "stream": True,
    }
    headers = {"x-request-id": "obs-1", "authorization": f"Bearer {key}"}
    stream(router.url, body, headers)
    done = [e for e in router.log_events("request.completed") if e.get("request_id") == "obs-1"]
    assert len(done) == 1
    event = done[0]
    assert (event["route"], event["model"], event["status"]) == ("local", model, 200)
    assert event["reasons"]
    assert all(isinstance(r, str) for r in event["reasons"])
    assert event["key"] == "observer"
    assert event["completion_tokens"] == 3
    assert event["queue_wait_s"] >= 0
    assert event["ttft_s"] is not None
    assert event["total_s"] >= event["ttft_s"]
    assert "messages" not in event
    assert [e for e in stack.llm.log_events() if e.get("request_id") == "obs-1"]
    assert any(e["level"] == "debug" for e in router.log_events())  # debug logging was on
    for service in (router, stack.llm):
        log = service.log_path.read_text()
        assert "X1234567" not in log
        assert key not in log
        assert key.removeprefix("sk-edge-")[:12] not in log  # nor any recognisable part


def test_content_logged_only_when_enabled(router_with, model: str) -> None:
    """EDGE_ROUTER_LOG_CONTENT=true adds the messages and the completion text."""
    router = router_with(EDGE_ROUTER_LOG_CONTENT="true")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 5,
        "stream": True,
    }
    text = stream(router.url, body, {"x-request-id": "content-1"})
    (event,) = [
        e for e in router.log_events("request.completed") if e.get("request_id") == "content-1"
    ]
    assert event["messages"] == body["messages"]
    assert event["completion"] == text
    assert text
