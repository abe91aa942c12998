"""The router against fake cloud upstreams with injected faults: retries, backoff, breaker,
fallback, exact relay. The fakes run on this test's event loop, so every client is async.

Upstreams, in order (the first is the default cloud of `auto`):
  flaky: model cloud-flaky, 1 attempt, breaker opens after 2 failures for 1 s
  fake:  model cloud-small, 3 attempts, 50 ms first backoff, 1 s read timeout
  off:   an upstream whose API key variable is not set (disabled)
"""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from fake_openai import FakeOpenAI, Fault
from openai import APIError, AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

HARD = "Think step by step and analyse the trade-offs of microservices."


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[dict[str, FakeOpenAI]]:
    servers = {"flaky": FakeOpenAI(), "fake": FakeOpenAI()}
    for server in servers.values():
        await server.start()
    yield servers
    for server in servers.values():
        await server.stop()


@pytest.fixture(autouse=True)
def clean(fakes: dict[str, FakeOpenAI]) -> None:
    for server in fakes.values():
        server.faults.clear()
        server.received.clear()
        server.sent.clear()


@pytest.fixture(scope="module")
def npu_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable fake thermal tree: tests set the NPU's millidegrees in this file."""
    zone = Path(tmp_path_factory.mktemp("sys")) / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("npu-thermal\n")
    (zone / "temp").write_text("45000\n")
    return zone / "temp"


def set_celsius(sensor: Path, celsius: float) -> None:
    sensor.write_text(f"{int(celsius * 1000)}\n")


@pytest.fixture(autouse=True)
def cool_npu(npu_temp: Path) -> Iterator[None]:
    yield
    set_celsius(npu_temp, 45)


@pytest.fixture(scope="module")
def router(router_with, fakes, npu_temp: Path) -> str:
    upstreams = [
        {
            "name": "flaky",
            "base_url": fakes["flaky"].url,
            "models": ["cloud-flaky"],
            "attempts": 1,
            "breaker_failures": 2,
            "breaker_reset_s": 1.0,
            "read_timeout_s": 1.0,
        },
        {
            "name": "fake",
            "base_url": fakes["fake"].url,
            "models": ["cloud-small"],
            "attempts": 3,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            "deadline_s": 10,
            "read_timeout_s": 1.0,
            "breaker_failures": 50,
        },
        {
            "name": "off",
            "base_url": "http://127.0.0.1:9/v1",
            "models": ["cloud-off"],
            "api_key_env": "EDGE_TEST_NOT_SET",
        },
    ]
    return router_with(
        EDGE_ROUTER_UPSTREAMS=json.dumps(upstreams),
        EDGE_ROUTER_SYSFS_ROOT=str(npu_temp.parents[3]),
    ).url


def chat(model: str, content: str = "Hello", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def sse_payloads(
    router_http: httpx.AsyncClient, body: dict
) -> tuple[httpx.Response, list[bytes]]:
    async with router_http.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = await response.aread()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    return response, events


async def health_of(router_http: httpx.AsyncClient) -> dict:
    return (await router_http.get("/health")).json()


async def test_non_stream_relayed_exactly(router_http: httpx.AsyncClient, fakes) -> None:
    """A cloud answer reaches the client byte for byte, with the route in the headers."""
    response = await router_http.post("/v1/chat/completions", json=chat("cloud-small"))
    assert response.status_code == 200
    assert response.content == fakes["fake"].sent[-1][0]
    assert response.headers["x-edge-route"] == "cloud"
    assert response.headers["x-edge-route-reason"] == "model pinned to cloud"
    assert fakes["fake"].received[-1].body["model"] == "cloud-small"


async def test_stream_relayed_chunk_by_chunk_with_usage(
    router_http: httpx.AsyncClient, fakes
) -> None:
    """Every upstream event is relayed unchanged, usage included, then [DONE]."""
    body = chat("cloud-small", stream=True, stream_options={"include_usage": True}, seed=3)
    response, events = await sse_payloads(router_http, body)
    assert response.headers["x-edge-route"] == "cloud"
    assert events[-1] == b"[DONE]"
    assert events[:-1] == fakes["fake"].sent[-1]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 5
    sent = fakes["fake"].received[-1].body
    assert (sent["stream_options"], sent["seed"]) == ({"include_usage": True}, 3)


def cloud_tokens(metrics: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "edge_tokens_total" and s.labels == {"route": "cloud", "kind": "completion"}
    )


async def test_stream_usage_is_counted_even_when_not_asked(
    router_http: httpx.AsyncClient, fakes
) -> None:
    """Without include_usage the router asks the upstream for usage anyway (rate limits and
    metrics need it) and keeps the usage chunk from the client, who did not ask for it."""
    before = cloud_tokens((await router_http.get("/metrics")).text)
    _, events = await sse_payloads(router_http, chat("cloud-small", stream=True))
    upstream = fakes["fake"].sent[-1]
    assert fakes["fake"].received[-1].body["stream_options"] == {"include_usage": True}
    assert json.loads(upstream[-1])["choices"] == []  # the usage chunk...
    assert events[:-1] == upstream[:-1]  # ...is the only one not relayed
    assert events[-1] == b"[DONE]"
    assert cloud_tokens((await router_http.get("/metrics")).text) == before + 5


async def test_retry_after_is_honoured(router_http: httpx.AsyncClient, fakes) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later."""
    fakes["fake"].faults.append(Fault("status", status=429, retry_after="1"))
    retries = (await health_of(router_http))["cloud"]["fake"]["retries"]
    response = await router_http.post("/v1/chat/completions", json=chat("cloud-small"))
    assert response.status_code == 200
    first, second = fakes["fake"].received
    assert second.at - first.at >= 1.0
    assert (await health_of(router_http))["cloud"]["fake"]["retries"] == retries + 1


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("status", status=500), Fault("status", status=503)],
        [Fault("slow_first_byte", delay_s=2.0)],
        [Fault("reset_before")],
        [Fault("malformed", after_events=0)],
    ],
    ids=["500-then-503", "slow-first-byte", "reset-before-first-token", "malformed-json"],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_transient_failures_are_retried(
    router_http, fakes, faults: list[Fault], stream: bool
) -> None:
    """Failures before the first token are retried until an attempt succeeds."""
    fakes["fake"].faults.extend(faults)
    if stream:
        response, events = await sse_payloads(router_http, chat("cloud-small", stream=True))
        assert events[:-1] == fakes["fake"].sent[-1][:-1]  # all but the usage we asked for
    else:
        response = await router_http.post("/v1/chat/completions", json=chat("cloud-small"))
        assert response.content == fakes["fake"].sent[-1][0]
    assert response.status_code == 200
    assert len(fakes["fake"].received) == len(faults) + 1


@pytest.mark.parametrize("kind", ["reset_after", "malformed"])
async def test_failure_after_first_token_is_an_error_event(router: str, fakes, kind: str) -> None:
    """Once tokens reached the client there is no retry: the stream ends in an error event."""
    fakes["fake"].faults.append(Fault(kind, after_events=2))  # type: ignore[arg-type]
    seen: list[str | None] = []
    async with AsyncOpenAI(base_url=f"{router}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(**chat("cloud-small"), stream=True)

        async def read_all() -> None:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content)

        with pytest.raises(APIError, match="failed mid-stream"):
            await read_all()
    assert seen == ["", "Hello"]
    assert len(fakes["fake"].received) == 1


async def test_client_errors_pass_through_without_retry(
    router_http: httpx.AsyncClient, fakes
) -> None:
    """The upstream's own 400 answer is relayed as it is and not retried."""
    fakes["fake"].faults.append(Fault("status", status=400))
    response = await router_http.post("/v1/chat/completions", json=chat("cloud-small"))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "injected 400"
    assert len(fakes["fake"].received) == 1


async def test_exhausted_retries_fall_back_to_local(router_http: httpx.AsyncClient, fakes) -> None:
    """auto: the cloud's failure sends the request to the local model, saying so."""
    fakes["flaky"].faults.append(Fault("status", status=502))
    response = await router_http.post("/v1/chat/completions", json=chat("auto", HARD, max_tokens=4))
    assert response.status_code == 200
    assert response.headers["x-edge-route"] == "local"
    assert "cloud failed, fell back to local" in response.headers["x-edge-route-reason"]
    assert response.json()["usage"]["completion_tokens"] == 4
    pinned = await router_http.post("/v1/chat/completions", json=chat("cloud-flaky"))
    assert pinned.status_code == 200  # and the success closed the failure count again


async def test_breaker_opens_then_probes_and_closes(router_http: httpx.AsyncClient, fakes) -> None:
    """Two failures open flaky's breaker: no more calls, auto goes local; a probe closes it."""
    flaky = fakes["flaky"]
    flaky.faults.extend([Fault("status", status=500), Fault("status", status=500)])
    for _ in range(2):
        failed = await router_http.post("/v1/chat/completions", json=chat("cloud-flaky"))
        assert failed.status_code == 503
    assert (await health_of(router_http))["cloud"]["flaky"]["breaker"] == "open"

    refused = await router_http.post("/v1/chat/completions", json=chat("cloud-flaky"))
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    auto = await router_http.post("/v1/chat/completions", json=chat("auto", HARD, max_tokens=2))
    assert auto.headers["x-edge-route"] == "local"
    assert "but cloud flaky circuit open" in auto.headers["x-edge-route-reason"]
    assert len(flaky.received) == 2  # nothing reached the upstream while open

    # the breaker half-opens breaker_reset_s (1 s) after opening: another process's clock,
    # with no event to wait on, so poll its state
    async with asyncio.timeout(5):
        while (await health_of(router_http))["cloud"]["flaky"]["breaker"] != "half_open":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    probe = await router_http.post("/v1/chat/completions", json=chat("cloud-flaky"))
    assert probe.status_code == 200
    assert (await health_of(router_http))["cloud"]["flaky"]["breaker"] == "closed"


async def test_local_only_requests_never_reach_the_cloud(
    router_http: httpx.AsyncClient, fakes
) -> None:
    """x-edge-local-only keeps hard prompts local and refuses cloud models with 403."""
    only = {"x-edge-local-only": "true"}
    auto = await router_http.post(
        "/v1/chat/completions", json=chat("auto", HARD, max_tokens=2), headers=only
    )
    assert auto.headers["x-edge-route"] == "local"
    assert "but request is local-only" in auto.headers["x-edge-route-reason"]
    pinned = await router_http.post("/v1/chat/completions", json=chat("cloud-small"), headers=only)
    assert pinned.status_code == 403
    assert pinned.json()["error"]["code"] == "local_only"
    assert not fakes["fake"].received
    assert not fakes["flaky"].received


async def test_models_and_health_show_where_things_run(
    router_http: httpx.AsyncClient, model: str
) -> None:
    """/v1/models lists cloud models by upstream; /health shows breakers and disabled upstreams."""
    models = {
        m["id"]: (m["route"], m["owned_by"])
        for m in (await router_http.get("/v1/models")).json()["data"]
    }
    assert models["cloud-flaky"] == ("cloud", "flaky")
    assert models["cloud-small"] == ("cloud", "fake")
    assert models[model][0] == "local"
    assert "cloud-off" not in models
    health = await health_of(router_http)
    assert health["mode"] == "hybrid"
    assert health["cloud"]["off"] == {"enabled": False, "reason": "EDGE_TEST_NOT_SET is not set"}
    assert health["cloud"]["fake"]["enabled"] is True


async def test_explain_runs_nothing(router_http: httpx.AsyncClient, fakes) -> None:
    """The dry run returns decision, features and state, and contacts no upstream."""
    response = await router_http.post("/v1/route/explain", json=chat("auto", HARD))
    assert response.status_code == 200
    explained = response.json()
    assert explained["decision"]["target"] == "cloud"
    assert explained["decision"]["fallback"]["target"] == "local"
    assert explained["features"]["reasoning_markers"] >= 2
    assert explained["complexity"]["score"] >= explained["complexity"]["threshold"]
    assert not fakes["flaky"].received
    assert not msgspec.json.decode(response.content).get("error")


async def test_thermal_guard(
    router_http: httpx.AsyncClient, fakes, npu_temp: Path, model: str
) -> None:
    """Warn (75 C) sends new simple requests to the cloud; critical (85 C) refuses new local
    work with 503, also for local-only requests; /health shows the state."""
    set_celsius(npu_temp, 79)
    warm = await router_http.post("/v1/chat/completions", json=chat("auto", "What is 2 plus 2?"))
    assert warm.headers["x-edge-route"] == "cloud"
    assert warm.headers["x-edge-route-reason"] == "NPU hot at 79 C"
    assert (await health_of(router_http))["npu"]["thermal_state"] == "warn"

    set_celsius(npu_temp, 91)
    pinned = await router_http.post("/v1/chat/completions", json=chat(model))
    assert pinned.status_code == 503
    assert "NPU critical at 91 C" in pinned.json()["error"]["message"]
    private = await router_http.post(
        "/v1/chat/completions", json=chat("auto"), headers={"x-edge-local-only": "1"}
    )
    assert private.status_code == 503
    assert int(private.headers["retry-after"]) >= 1
    assert (await health_of(router_http))["npu"]["thermal_state"] == "critical"
    assert len(fakes["flaky"].received) == 1  # only the warm request reached the cloud
