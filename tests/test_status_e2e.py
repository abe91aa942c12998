"""The status page (`GET /`), its JSON (`GET /v1/status`) and `edge-ai status`, against a
stack started by `edge-ai up` (nats, llm, vision, rag, router: real processes, one of them
restarted by the supervisor) with traffic: local and cloud chats (the cloud a fake upstream),
a detection, an embedding, an ingest and a search. The NPU's sysfs is a fake tree.

The page is driven in Debian's chromium (installed with apt when missing: playwright's own
browser download does not work here) through playwright; its screenshot is saved in
EDGE_TEST_ARTIFACTS (default build/test-artifacts/)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import skimage
from api_keys import make_key
from edge_router.status import general
from edge_up import EdgeUp
from fake_openai import FakeOpenAI
from playwright.async_api import Browser, Page, async_playwright
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("EDGE_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
LOCAL_PROMPT = "What is the capital of France?"
CLOUD_PROMPT = "Implement a Python function that merges two sorted lists."
SAMPLE_S = 0.3


@dataclass
class Board:
    url: str
    keys: dict[str, str]
    sysfs: Path
    up: EdgeUp


def fake_sysfs(root: Path) -> Path:
    """The RK3576's NPU as its drivers show it: a thermal zone, debugfs load, devfreq clock."""
    zone = root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("npu-thermal\n")
    (zone / "temp").write_text("47500\n")
    (root / "kernel" / "debug" / "rknpu").mkdir(parents=True)
    (root / "kernel" / "debug" / "rknpu" / "load").write_text(
        "NPU load:  Core0: 30%, Core1: 10%,\n"
    )
    (root / "class" / "devfreq" / "27700000.npu").mkdir(parents=True)
    (root / "class" / "devfreq" / "27700000.npu" / "cur_freq").write_text("950000000\n")
    return root


@pytest.fixture(scope="module")
def board(cloud: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    root = tmp_path_factory.mktemp("status")
    keys_file = root / "keys.json"
    keys = {
        "status": make_key(keys_file, "watcher", "--scope", "status"),
        "admin": make_key(keys_file, "operator", "--scope", "admin"),
        "chat": make_key(keys_file, "app", "--scope", "chat"),
    }
    upstream = {"name": "fakecloud", "base_url": cloud.url, "models": ["gpt-fake"]}
    env = {
        "EDGE_ROUTER_KEYS_FILE": str(keys_file),
        "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream]),
        "EDGE_ROUTER_SYSFS_ROOT": str(fake_sysfs(root / "sys")),
        "EDGE_ROUTER_STATUS_SAMPLE_S": str(SAMPLE_S),
        "EDGE_SUPERVISOR_BACKOFF_INITIAL_S": "0.2",
    }
    with EdgeUp(root / "run", env) as up:
        up.wait_health(lambda h: h["services"]["llm"]["reachable"] and bool(h["cloud"]))
        yield Board(up.url, keys, root / "sys", up)


def status_of(board: Board, key: str = "status") -> dict[str, Any]:
    answer = httpx.get(f"{board.url}/v1/status", headers=bearer(board.keys[key]), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def wait_status(board: Board, condition: Any, timeout: float = 30) -> dict[str, Any]:
    """Poll /v1/status until `condition` holds for it (the router tells its state only so)."""
    deadline = time.monotonic() + timeout
    while not condition(status := status_of(board)):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


async def chat(client: httpx.AsyncClient, prompt: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    answer = await client.post("/v1/chat/completions", json={**body, "stream": stream})
    assert answer.status_code == 200, answer.text
    return answer


@pytest.fixture(scope="module")
async def traffic(board: Board) -> dict[str, Any]:
    """Requests of every kind, and a worker killed once (restarted by the supervisor): the
    reasons each chat was given, as counted by route."""
    headers = bearer(board.keys["admin"])
    async with httpx.AsyncClient(base_url=board.url, headers=headers, timeout=60) as client:
        photo = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
        detected = await client.post(
            "/v1/vision/detect", files={"image": ("chelsea.png", photo, "image/png")}
        )
        assert detected.status_code == 200, detected.text
        os.kill(board.up.pid("vision"), signal.SIGKILL)  # the supervisor starts it again
        chats = [
            await chat(client, LOCAL_PROMPT),
            *[await chat(client, CLOUD_PROMPT, stream=stream) for stream in (False, True)],
        ]
        assert [c.headers["x-edge-route"] for c in chats] == ["local", "cloud", "cloud"]
        embedded = await client.post("/v1/embeddings", json={"model": "auto", "input": "bees"})
        assert embedded.status_code == 200, embedded.text
        ingested = await client.post(
            "/v1/rag/ingest",
            files={"file": ("bees.md", b"# Bees\n\nBees make honey from nectar.\n")},
            data={"collection": "status"},
        )
        assert ingested.status_code == 200, ingested.text
        found = await client.post("/v1/rag/search", json={"collection": "status", "query": "honey"})
        assert found.status_code == 200, found.text
    # the restarted vision worker, found again
    wait_status(
        board,
        lambda s: (
            s["processes"]["vision"]["restarts"] == 1
            and s["processes"]["vision"]["state"] == "running"
            and s["services"]["detectors"] == ["ssd-mobilenet-v2-coco"]
        ),
    )
    # the charts: samples before and after the NPU warms up
    before = wait_status(board, lambda s: len(s["history"]) >= 2)["history"][-1]["at"]
    (board.sysfs / "class" / "thermal" / "thermal_zone0" / "temp").write_text("61000\n")
    wait_status(board, lambda s: s["history"][-1]["at"] > before + SAMPLE_S)
    reasons = Counter(
        (c.headers["x-edge-route"], reason)
        for c in chats
        for reason in c.headers["x-edge-route-reason"].split("; ")
    )
    return {"reasons": reasons}


def test_status_counts_the_traffic(board: Board, traffic: dict[str, Any]) -> None:
    """Routes with their reasons, recent requests (no prompt text), vision and RAG activity,
    processes with restarts, resident models, NPU and breakers are all in /v1/status."""
    s = status_of(board)
    assert s["routes"] == {"local": 1, "cloud": 2}
    reasons = {(r["route"], r["reason"]): r["count"] for r in s["reasons"]}
    assert reasons == {
        (route, general(reason)): n for (route, reason), n in traffic["reasons"].items()
    }
    chats = [r for r in s["recent"] if r["endpoint"] == "chat"]
    assert [(r["route"], r["model"], r["status"]) for r in reversed(chats)] == [
        ("local", "smollm2-135m-instruct", 200),
        ("cloud", "gpt-fake", 200),
        ("cloud", "gpt-fake", 200),
    ]
    assert all(r["latency_ms"] > 0 and r["request_id"] for r in s["recent"])
    assert {r["endpoint"] for r in s["recent"]} >= {"detect", "embeddings", "rag_ingest"}
    raw = httpx.get(f"{board.url}/v1/status", headers=bearer(board.keys["status"])).text
    assert "France" not in raw
    assert "merges two sorted" not in raw
    activity = {a["endpoint"]: a for a in s["activity"]}
    assert activity["embeddings"]["ok"] == activity["rag_ingest"]["ok"] == 1
    assert activity["rag_search"]["ok"] == activity["detect"]["ok"] == 1
    assert activity["detect"]["failed"] == 0
    assert set(s["processes"]) == {"nats-server", "llm", "vision", "rag", "router"}
    assert s["processes"]["vision"]["restarts"] == 1
    assert s["services"]["resident"] == ["smollm2-135m-instruct"]
    assert s["services"]["detectors"] == ["ssd-mobilenet-v2-coco"]
    assert s["npu"] == {
        "temperature_c": 61.0,
        "thermal_zone": "npu-thermal",
        "thermal_state": "ok",
        "warn_c": 75.0,
        "critical_c": 85.0,
        "load_percent": 20.0,
        "cores": {"core0": 30, "core1": 10},
        "freq_mhz": 950.0,
    }
    temps = [h["temperature_c"] for h in s["history"]]
    assert temps[0] == 47.5
    assert temps[-1] == 61.0
    assert s["breakers"] == [
        {"upstream": "fakecloud", "state": "closed", "retry_in_s": 0.0, "retries": 0, "reason": ""}
    ]
    assert s["queue"]["waited"] >= 1  # the local chat went through admission


def test_activity_is_the_routers_own_metric(board: Board, traffic: dict[str, Any]) -> None:
    """The vision and RAG counts are edge_api_requests_total, as /metrics shows it."""
    text = httpx.get(f"{board.url}/metrics").text
    counted = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "edge_api_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }
    activity = {a["endpoint"]: a["ok"] for a in status_of(board)["activity"]}
    assert counted[("detect", "200")] == activity["detect"] == 1
    assert counted[("embeddings", "200")] == activity["embeddings"] == 1


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, 401, "missing_api_key"),
        ("sk-edge-wrong", 401, "invalid_api_key"),
        ("chat", 403, "insufficient_scope"),
        ("status", 200, None),
        ("admin", 200, None),
    ],
)
def test_status_takes_the_status_scope(
    board: Board, key: str | None, status: int, code: str | None
) -> None:
    """/v1/status needs a key with `status` or `admin`; the page's HTML needs none."""
    key = board.keys.get(key or "", key)
    answer = httpx.get(f"{board.url}/v1/status", headers=bearer(key) if key else {})
    assert answer.status_code == status
    if code:
        assert answer.json()["error"]["code"] == code
    page = httpx.get(f"{board.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text
    # self-contained: no script, style sheet or image from elsewhere (a CDN)
    assert not re.search(r"<script[^>]+src|<link|@import|url\(|<img", page.text)


def test_status_is_in_the_openapi_document(board: Board) -> None:
    """/v1/status is documented with its answer's schema; the page is not an API."""
    document = httpx.get(f"{board.url}/schema/openapi.json").json()
    assert "/" not in document["paths"]
    answer = document["paths"]["/v1/status"]["get"]["responses"]["200"]
    ref = answer["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == set(status_of(board))
    assert document["paths"]["/v1/status"]["get"].get("security") != []  # not an open path


def debian_chromium() -> str:
    """Debian's chromium, installed with apt when missing."""
    if not shutil.which("chromium"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    path = shutil.which("chromium")
    assert path, "chromium did not install"
    return path


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        # root in a container: chromium's sandbox needs user namespaces it may not have
        browser = await pw.chromium.launch(executable_path=debian_chromium(), args=["--no-sandbox"])
        yield browser
        await browser.close()


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).first.text_content() or "").strip()


async def login(page: Page, board: Board, key: str) -> None:
    await page.goto(board.url)
    await page.locator("#key").fill(key)
    await page.locator("#login button").click()


async def test_page_asks_for_a_key(board: Board, browser: Browser) -> None:
    """Without a key the page shows only its login; a key without the scope is refused there."""
    page = await browser.new_page()
    await page.goto(board.url)
    await page.locator("#login").wait_for(state="visible")
    assert await page.locator("#board").is_hidden()
    await login(page, board, board.keys["chat"])
    await page.locator("#login-error").filter(has_text="lacks the `status` scope").wait_for()
    assert await page.locator("#board").is_hidden()
    await page.close()


@pytest.fixture
def screenshot() -> Path:
    """Where the page's screenshot is kept after the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / "status-page.png"


async def test_page_shows_the_board_live(
    board: Board, browser: Browser, traffic: dict[str, Any], screenshot: Path
) -> None:
    """Logged in with a key, the page shows what /v1/status says, its charts draw the
    samples, and a new request shows up without a reload."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1400})
    await login(page, board, board.keys["status"])
    await page.locator("#board").wait_for(state="visible")
    shown_at = status_of(board)["at"]
    await page.wait_for_function(
        f"Number(document.querySelector('#updated').dataset.at) > {shown_at}"
    )
    s = status_of(board)  # nothing moves now but the samples
    assert (
        await page.evaluate("sessionStorage.getItem('edge-ai.status.key')") == board.keys["status"]
    )
    assert await text(page, "[data-field='routes.local']") == str(s["routes"]["local"])
    assert await text(page, "[data-field='routes.cloud']") == str(s["routes"]["cloud"])
    assert await text(page, "[data-field='npu.temperature_c']") == "61 °C"
    assert await text(page, "[data-field='npu.freq_mhz']") == "950 MHz"
    assert await text(page, "[data-field='services.resident']") == "smollm2-135m-instruct"
    rows = page.locator("#processes tbody tr")
    assert await rows.count() == len(s["processes"]) == 5
    vision = rows.filter(has_text="vision")
    assert (await vision.locator("td").all_text_contents())[1:4:2] == ["running", "1"]
    activity = page.locator("#activity tbody tr").filter(has_text="detect").locator("td")
    assert (await activity.all_text_contents())[1] == str(
        next(a["ok"] for a in s["activity"] if a["endpoint"] == "detect")
    )
    assert await page.locator("#recent tbody tr").count() == len(s["recent"])
    reasons = await page.locator("#reasons tbody tr").all_text_contents()
    assert reasons == [f"{r['route']}{r['reason']}{r['count']}" for r in s["reasons"]]
    assert "fakecloud" in await text(page, "#breakers tbody")
    for chart in ("temperature", "load", "clock", "queue"):
        points = int(await page.locator(f"#chart-{chart}").get_attribute("data-points") or 0)
        assert points >= 2, chart
        assert await page.locator(f"#chart-{chart} polyline").count() >= 1
    # the temperature line climbs from 47.5 to 61: its last point is higher (smaller y)
    line = await page.locator("#chart-temperature polyline").last.get_attribute("points") or ""
    ys = [float(p.split(",")[1]) for p in line.split()]
    assert ys[-1] < ys[0]

    await page.evaluate("window.notReloaded = true")
    before = s["routes"]["local"]
    async with httpx.AsyncClient(
        base_url=board.url, headers=bearer(board.keys["admin"]), timeout=60
    ) as client:
        await chat(client, LOCAL_PROMPT)
    await page.locator("[data-field='routes.local']").filter(has_text=str(before + 1)).wait_for()
    assert await page.evaluate("window.notReloaded === true")
    png = await page.screenshot(path=screenshot, full_page=True)
    assert len(png) > 10_000
    await page.close()


def edge_ai(*args: str, key: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_API_KEY": key, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "edge_common.cli", "status", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_edge_ai_status_in_the_terminal(board: Board, traffic: dict[str, Any]) -> None:
    """`edge-ai status` prints the same state; without a key it says why and exits 2."""
    shown = edge_ai("--url", board.url, key=board.keys["status"])
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for expected in (
        "Services",
        "nats-server",
        "smollm2-135m-instruct",
        "fakecloud",
        "closed",
        "61 °C",
        "950 MHz",
        "rag_ingest",
        "gpt-fake",
    ):
        assert expected in out, expected
    assert all(r["reason"] in out for r in status_of(board)["reasons"])
    assert "France" not in out
    as_json = edge_ai("--url", board.url, "--json", key=board.keys["status"])
    assert json.loads(as_json.stdout)["routes"]["cloud"] == 2
    refused = edge_ai("--url", board.url)
    assert refused.returncode == 2
    assert "401" in refused.stderr
