"""A worker that dies, hangs or is only slow, seen from the client: a dead one is known in
seconds (NATS says its connection is gone), a request that got nothing yet falls back to the
cloud, and a worker that is merely unresponsive is given the whole idle timeout."""

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from edge_common.npu_lease import NpuLease
from fake_openai import WORDS, FakeOpenAI
from nats import connect
from streaming import STREAM, stream_then


def test_a_killed_worker_ends_its_stream_within_seconds(launch, new_nats, tmp_path: Path) -> None:
    """kill -9 mid-stream, with a 30 s idle timeout: the stream ends with a 503-type error
    event in a few seconds (the router asked NATS, which knew the worker was gone)."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"})
        try:
            events, seconds = stream_then(router.url, worker.proc.kill)
        finally:
            router.proc.stop()
    error = events[-1]["error"]  # type: ignore[index]
    assert error["code"] == "service_unavailable"
    assert "stopped" in error["message"]
    assert seconds < 5, seconds  # the idle timeout would take 30 s


def test_a_named_model_whose_worker_is_gone_is_503_not_404(
    launch, new_nats, wait_for, tmp_path: Path
) -> None:
    """The only worker of a model is killed (nothing restarts it) during a JSON request:
    that request gets 503 with Retry-After within seconds, and so does every later request
    naming the model, JSON and stream, also once discovery rounds dropped it from the
    catalog (it was a 404 model_not_found)."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        env = {**nats.env, "EDGE_ROUTER_DISCOVERY_INTERVAL_S": "0.2"}
        router = launch("router", tmp_path, {**env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"})
        body = {**STREAM, "stream": False, "max_tokens": 2}
        url = f"{router.url}/v1/chat/completions"
        try:
            with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=20) as http:
                in_flight = pool.submit(httpx.post, url, json={**body, "max_tokens": 2000})
                # the worker holds the NPU: it is generating the answer
                wait_for(lambda: http.get(f"{worker.url}/health").json()["npu_lease"]["held"], 20)
                worker.proc.kill()
                killed = time.monotonic()
                cut = in_flight.result(30)
                cut_s, answers = time.monotonic() - killed, [cut]
                # for 2 s (10 discovery rounds): each request is the probe
                while time.monotonic() - killed < 2 + cut_s:
                    for stream in (False, True):
                        answers.append(http.post(url, json={**body, "stream": stream}))
        finally:
            router.proc.stop()
    assert cut_s < 5, cut_s  # the idle timeout would take 30 s
    assert len(answers) > 4
    assert {(a.status_code, a.json()["error"]["code"]) for a in answers} == {
        (503, "service_unavailable")
    }, [a.text for a in answers if a.status_code != 503][:3]
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers)


def test_an_unresponsive_worker_gets_the_whole_idle_timeout(
    launch, new_nats, tmp_path: Path
) -> None:
    """SIGSTOP mid-stream (connected, but answering nothing, like a worker starved of CPU):
    unanswered probes are no proof of death, so the stream ends only after the 4 s idle
    timeout, with an error event."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "4"})
        try:
            events, seconds = stream_then(
                router.url, lambda: worker.proc.popen.send_signal(signal.SIGSTOP)
            )
        finally:
            worker.proc.popen.send_signal(signal.SIGCONT)
            router.proc.stop()
            worker.proc.stop()
    error = events[-1]["error"]  # type: ignore[index]
    assert error["code"] == "service_unavailable"
    assert "stopped responding" in error["message"]
    assert 4 <= seconds < 10, seconds


def text_of(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return response.json()["choices"][0]["message"]["content"]
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_auto_falls_back_when_the_worker_dies_before_its_first_token(
    launch, new_nats, tmp_path: Path, cloud: FakeOpenAI, stream: bool
) -> None:
    """The worker accepted an `auto` request and waits for the NPU (held elsewhere) when it
    is killed: nothing reached the client yet, so the cloud answers it, and says why."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, {**nats.env, "EDGE_LLM_BOARD": "held"})
        upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-model"]}
        env = {**nats.env, "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream])}
        router = launch("router", tmp_path, {**env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"})
        nc = await connect(nats.url, **nats.creds("llm"))
        asked_before = len(cloud.received)
        other = NpuLease(nc, board="held", owner="vision")
        await other.start()
        try:
            async with (
                httpx.AsyncClient(base_url=router.url, timeout=20) as http,
                other.hold("yolo"),
            ):
                body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}
                answer = asyncio.create_task(
                    http.post("/v1/chat/completions", json={**body, "stream": stream})
                )
                # the worker queued (the holder's own ticket may still show: it goes after)
                await other.wait_until(lambda s: any(o.startswith("llm@") for o in s.waiting))
                started = time.monotonic()
                await asyncio.to_thread(worker.proc.kill)
                response = await answer
                seconds = time.monotonic() - started
        finally:
            await other.stop()
            await nc.close()
            router.proc.stop()
    assert response.status_code == 200
    assert response.headers["x-edge-route"] == "cloud"
    assert "local failed, fell back to cloud" in response.headers["x-edge-route-reason"]
    assert text_of(response, stream) == "".join(WORDS)
    assert len(cloud.received) == asked_before + 1
    assert seconds < 5, seconds


def test_a_nats_restart_ends_open_streams_answers_503_then_recovers(
    launch, new_nats, tmp_path: Path
) -> None:
    """kill -9 of nats-server mid-stream: the stream ends with an error event in seconds;
    requests meanwhile get 503 with Retry-After at once (no hang); once NATS is back on its
    port and store, everyone reconnects by themselves and a request gets 200."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"})
        try:
            events, seconds = stream_then(router.url, nats.proc.kill)
            body = {**STREAM, "stream": False, "max_tokens": 4}
            with httpx.Client(base_url=router.url, timeout=10) as http:
                while_down = [http.post("/v1/chat/completions", json=body) for _ in range(3)]
                nats.restart()
                recovered = time.monotonic()
                answer = http.post("/v1/chat/completions", json=body)
                while answer.status_code == 503 and time.monotonic() - recovered < 20:
                    answer = http.post("/v1/chat/completions", json=body)  # reconnecting
                recovered_s = time.monotonic() - recovered
        finally:
            router.proc.stop()
            worker.proc.stop()
    error = events[-1]["error"]  # type: ignore[index]
    assert error["code"] == "service_unavailable"
    assert seconds < 5, seconds
    assert [r.status_code for r in while_down] == [503] * 3
    assert all(int(r.headers["retry-after"]) >= 1 for r in while_down)
    assert answer.status_code == 200, (answer.text, recovered_s)
    assert answer.json()["usage"]["completion_tokens"] == 4


def test_a_quick_nats_restart_mid_stream_ends_it_with_an_error(
    launch, new_nats, tmp_path: Path
) -> None:
    """nats-server killed and back within a fraction of a second, mid-stream: events sent
    meanwhile may be lost (NATS delivers at most once), so the stream must end with an error
    event, never go on with a hole in the answer or hang; the next request gets 200."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        router = launch("router", tmp_path, {**nats.env, "EDGE_ROUTER_IDLE_TIMEOUT_S": "30"})

        def restart() -> None:
            nats.proc.kill()
            nats.restart()

        try:
            events, seconds = stream_then(router.url, restart)
            body = {**STREAM, "stream": False, "max_tokens": 4}
            with httpx.Client(base_url=router.url, timeout=30) as http:
                answer = http.post("/v1/chat/completions", json=body)
                while answer.status_code == 503:  # bounded by the test timeout
                    answer = http.post("/v1/chat/completions", json=body)
        finally:
            router.proc.stop()
            worker.proc.stop()
    assert events[-1]["error"]["code"] == "service_unavailable"  # type: ignore[index]
    assert seconds < 5, seconds
    assert answer.status_code == 200


def test_a_stalled_nats_server_leaves_no_deaf_router(launch, new_nats, tmp_path: Path) -> None:
    """nats-server frozen (SIGSTOP) while a request waits for a worker, then resumed: the
    request gets 503, and once the server answers again so does the stack (the router's
    connection used to stay deaf for minutes while it called itself connected)."""
    with new_nats(tmp_path) as nats:
        worker = launch("llm", tmp_path, nats.env)
        env = {**nats.env, "EDGE_ROUTER_ACCEPT_TIMEOUT_S": "2"}
        router = launch("router", tmp_path, env)
        body = {**STREAM, "stream": False, "max_tokens": 4}
        try:
            with httpx.Client(base_url=router.url, timeout=30) as http:
                nats.proc.popen.send_signal(signal.SIGSTOP)
                try:
                    frozen = http.post("/v1/chat/completions", json=body)
                finally:
                    nats.proc.popen.send_signal(signal.SIGCONT)
                resumed = time.monotonic()
                answer = http.post("/v1/chat/completions", json=body)
                while answer.status_code == 503 and time.monotonic() - resumed < 20:
                    answer = http.post("/v1/chat/completions", json=body)  # catching up
        finally:
            router.proc.stop()
            worker.proc.stop()
    assert frozen.status_code == 503
    assert answer.status_code == 200, answer.text
