"""Observability through real processes: Prometheus /metrics parsed by prometheus-client,
and one `request.completed` log event per request, with nothing secret or private in logs."""

import httpx
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
    assert after[("edge_npu_temperature_celsius", ())] == 47.5
    worker = samples(stack.llm.url)
    assert worker[("process_resident_memory_bytes", ())] > 0
    assert worker[("edge_llm_generations_total", (("model", model), ("outcome", "completed")))] >= 1
    assert worker[("edge_llm_lease_wait_seconds_count", ())] >= 1
    assert worker[("edge_llm_resident_models", ())] == 1


def test_request_logs_carry_the_request_id_but_no_prompt(
    stack, http: httpx.Client, model: str
) -> None:
    """One request.completed event with route, model, status, timings and tokens; the same
    request id in router and worker logs; the prompt text in no log."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "max_tokens": 3,
        "stream": True,
    }
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": "obs-1"}
    ) as r:
        r.read()
    done = [
        e for e in stack.router.log_events("request.completed") if e.get("request_id") == "obs-1"
    ]
    assert len(done) == 1
    event = done[0]
    assert (event["route"], event["model"], event["status"]) == ("local", model, 200)
    assert event["completion_tokens"] == 3
    assert event["ttft_s"] is not None
    assert event["total_s"] >= event["ttft_s"]
    assert [e for e in stack.llm.log_events() if e.get("request_id") == "obs-1"]
    for service in (stack.router, stack.llm):
        assert "X1234567" not in service.log_path.read_text()
