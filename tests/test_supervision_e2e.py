"""`edge-ai up` supervises: a process that dies is restarted, one that keeps dying is left
failed while the router serves what it can; each process sees only its own secrets; the
ports it is told are the ports it waits on; one stack per run dir.

Times measured (kill to error event, to worker ready, to next 200; NATS recovery) are
printed: run with `-s` to see them."""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from edge_common.stack import free_port
from edge_up import EdgeUp
from fake_openai import FakeOpenAI
from prometheus_client.parser import text_string_to_metric_families

LONG = {"role": "user", "content": "Write a very long story about a lighthouse keeper."}
LOCAL = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}
FAST = {"EDGE_SUPERVISOR_BACKOFF_INITIAL_S": "0.2", "EDGE_SUPERVISOR_BACKOFF_MAX_S": "1"}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def local_worker_ready(health: dict) -> bool:
    """The worker runs and the router has found it (its catalog is refreshed every 2 s)."""
    llm = health["processes"]["llm"]
    return llm["state"] == "running" and health["services"]["llm"]["reachable"]


def test_killed_worker_mid_stream_is_restarted(tmp_path: Path) -> None:
    """kill -9 of the llm worker mid-stream: the stream ends with an error event, the router
    keeps its PID, the worker is back with a new PID and restarts=1, the next request is 200."""
    with EdgeUp(tmp_path, FAST) as up:
        before = up.wait_health(local_worker_ready)["processes"]
        killed = 0.0
        events: list[dict | str] = []
        body = {**LOCAL, "messages": [LONG], "stream": True, "temperature": 0, "max_tokens": 2000}
        with httpx.stream("POST", f"{up.url}/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    events.append(data if data == "[DONE]" else json.loads(data))
                if len(events) == 2 and not killed:  # the role chunk, then the first token
                    os.kill(before["llm"]["pid"], 9)
                    killed, killed_at = time.monotonic(), time.time()
        to_error = time.monotonic() - killed
        after = up.wait_health(
            lambda h: local_worker_ready(h) and h["processes"]["llm"]["restarts"]
        )
        to_ready = after["processes"]["llm"]["since"] - killed_at  # when it became ready
        # may wait out the dead worker's NPU lease (its TTL): a bounded, longer timeout
        reply = httpx.post(
            f"{up.url}/v1/chat/completions", json={**LOCAL, "max_tokens": 2}, timeout=30
        )
        to_200 = time.monotonic() - killed
    print(
        f"\nworker kill -9: error event {to_error:.2f} s,"
        f" ready {to_ready:.2f} s, next 200 {to_200:.2f} s"
    )
    assert "error" in events[-1], events[-3:]
    procs = after["processes"]
    assert procs["router"]["pid"] == before["router"]["pid"]
    assert procs["llm"]["pid"] != before["llm"]["pid"]
    assert (procs["llm"]["restarts"], procs["llm"]["last_exit"]) == (1, -9)
    assert reply.status_code == 200, reply.text


def test_killed_nats_is_restarted_with_its_store(tmp_path: Path) -> None:
    """kill -9 of nats-server: it comes back on the same port and store (and still no
    monitoring port); meanwhile every
    request is answered (200, or 503 with Retry-After) within the client's timeout; then 200."""
    with EdgeUp(tmp_path, FAST) as up:
        up.wait_health(local_worker_ready)
        old = up.pid("nats-server")
        argv = Path(f"/proc/{old}/cmdline").read_bytes()
        os.kill(old, 9)
        killed = time.monotonic()
        statuses: list[int] = []
        while True:  # polling for recovery: each request is itself the probe
            reply = httpx.post(
                f"{up.url}/v1/chat/completions", json={**LOCAL, "max_tokens": 2}, timeout=20
            )
            statuses.append(reply.status_code)
            if reply.status_code == 503:
                assert int(reply.headers["retry-after"]) > 0
            if reply.status_code == 200 and up.pid("nats-server") != old:
                break
            assert time.monotonic() - killed < 30, (statuses, up.tail())
        recovered = time.monotonic() - killed
        nats = up.health()["processes"]["nats-server"]
        new_argv = Path(f"/proc/{nats['pid']}/cmdline").read_bytes()
    print(f"\nnats kill -9: 200 again after {recovered:.2f} s; statuses meanwhile {statuses}")
    assert set(statuses) <= {200, 503}
    assert (nats["state"], nats["restarts"], nats["last_exit"]) == ("running", 1, -9)
    assert new_argv == argv  # same port, same JetStream store dir
    assert b"-m" not in argv.split(b"\0")  # no monitoring port


async def test_worker_failing_at_every_start_is_left_failed(
    tmp_path: Path, cloud: FakeOpenAI
) -> None:
    """A worker whose model file is missing crashes at every start: after the burst (3) it
    is failed, /health and /metrics say so, and the cloud model is still served."""
    upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-model"]}
    env = {
        **FAST,
        "EDGE_SUPERVISOR_RESTART_BURST": "3",
        "EDGE_LLM_MODELS": json.dumps([{"backend": "llamacpp", "path": "/missing.gguf"}]),
        "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream]),
    }
    up = EdgeUp(tmp_path, env)
    await asyncio.to_thread(up.__enter__)
    try:
        health = await asyncio.to_thread(
            up.wait_health, lambda h: h["processes"]["llm"]["state"] == "failed"
        )
        async with httpx.AsyncClient(base_url=up.url, timeout=20) as http:
            reply = await http.post("/v1/chat/completions", json={**LOCAL, "model": "cloud-model"})
            metrics = (await http.get("/metrics")).text
    finally:
        await asyncio.to_thread(up.__exit__)
    llm = health["processes"]["llm"]
    assert health["status"] == "degraded"
    assert (llm["restarts"], llm["pid"]) == (2, None)
    assert llm["last_exit"] != 0
    assert health["processes"]["router"]["state"] == "running"
    assert any('"supervisor.process_failed"' in line for line in up.lines)
    assert reply.status_code == 200, reply.text
    samples = {
        (s.name, s.labels.get("process")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("edge_process_up", "llm")] == 0
    assert samples[("edge_process_up", "router")] == 1
    assert samples[("edge_process_restarts_total", "llm")] == 2
    assert samples[("edge_process_last_exit_status", "llm")] == llm["last_exit"]
    assert ("edge_process_last_exit_status", "router") not in samples  # it never exited


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeUp]:
    """A stack configured by environment only: its ports, an inherited EDGE_NATS_URL that
    must lose to the supervisor's, a cloud upstream with its key, user-set NATS passwords."""
    env = {
        "EDGE_ROUTER_PORT": str(free_port()),
        "EDGE_LLM_PORT": str(free_port()),
        "EDGE_VISION_PORT": str(free_port()),
        "EDGE_NATS_URL": "nats://127.0.0.1:9",
        "EDGE_ROUTER_UPSTREAMS": json.dumps(
            [
                {
                    "name": "c",
                    "base_url": "http://127.0.0.1:9/v1",
                    "models": ["c"],
                    "api_key_env": "EDGE_TEST_CLOUD_KEY",
                }
            ]
        ),
        "EDGE_TEST_CLOUD_KEY": "sk-cloud-secret",
        "EDGE_OPS_NATS_PASSWORD": "opsSecretPassword0123",
    }
    with EdgeUp(tmp_path_factory.mktemp("run"), env, flags=False) as up:
        yield up


def test_ports_come_from_the_environment(configured: EdgeUp) -> None:
    """EDGE_ROUTER_PORT / EDGE_LLM_PORT set, no options: the stack starts there and serves
    (the supervisor waited on those ports), on its own bus despite an inherited EDGE_NATS_URL."""
    health = configured.wait_health(local_worker_ready)
    llm = httpx.get(f"http://127.0.0.1:{configured.ports['llm-port']}/health", timeout=5)
    assert health["processes"]["router"]["state"] == "running"
    assert llm.status_code == 200


def test_each_process_gets_only_its_own_secrets(configured: EdgeUp) -> None:
    """nats-server gets the NATS passwords; each service only its own; the cloud key only
    the router."""
    pids = {name: p["pid"] for name, p in configured.health()["processes"].items()}
    secrets = {
        name: {k for k in environ(pid) if k.endswith("NATS_PASSWORD") or k.endswith("CLOUD_KEY")}
        for name, pid in pids.items()
    }
    assert secrets == {
        "nats-server": {
            "EDGE_ROUTER_NATS_PASSWORD",
            "EDGE_LLM_NATS_PASSWORD",
            "EDGE_VISION_NATS_PASSWORD",
            "EDGE_RAG_NATS_PASSWORD",
            "EDGE_OPS_NATS_PASSWORD",
        },
        "llm": {"EDGE_LLM_NATS_PASSWORD"},
        "vision": {"EDGE_VISION_NATS_PASSWORD"},
        "rag": {"EDGE_RAG_NATS_PASSWORD"},
        "router": {"EDGE_ROUTER_NATS_PASSWORD", "EDGE_TEST_CLOUD_KEY"},
    }
    assert environ(pids["router"])["EDGE_TEST_CLOUD_KEY"] == "sk-cloud-secret"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes found in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def test_nats_server_listens_on_its_client_port_only(configured: EdgeUp) -> None:
    """nats-server opens its client port and nothing else: no monitoring port that any
    local user could read."""
    pid = configured.health()["processes"]["nats-server"]["pid"]
    assert listening_ports(pid) == {configured.ports["nats-port"]}


def test_second_up_on_the_same_run_dir_fails_at_once(configured: EdgeUp) -> None:
    """A second `edge-ai up` on a run dir in use exits 1 with a clear message and leaves the
    running stack's files as they were."""
    run_dir = configured.run_dir
    files = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    argv = [sys.executable, "-m", "edge_common.cli", "up", "--run-dir", str(run_dir)]
    argv += [f"--port={free_port()}", f"--llm-port={free_port()}", f"--nats-port={free_port()}"]
    argv += [f"--vision-port={free_port()}"]
    started = time.monotonic()
    second = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert time.monotonic() - started < 10  # not after a startup attempt
    assert second.returncode == 1
    assert f"pid {configured.proc.pid}" in second.stderr
    assert "in use" in second.stderr
    assert {p: p.read_bytes() for p in files} == files
    assert configured.health()["processes"]["router"]["state"] == "running"


def test_health_without_supervisor_has_no_processes(stack) -> None:
    """A router not started by `edge-ai up` reports no processes and stays ok."""
    health = httpx.get(f"{stack.router.url}/health", timeout=5).json()
    assert health["processes"] == {}
