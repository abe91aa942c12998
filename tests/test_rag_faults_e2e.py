"""The rag worker stalled or killed behind the router: nothing hangs, nothing is stored twice.

Real processes: a bus, the rag worker, a router with a short rag timeout."""

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CORPUS = Path(__file__).resolve().parents[1] / "services" / "rag" / "tests" / "corpus"
RAG_TIMEOUT_S = 1.5


@pytest.fixture
def stack(launch, new_nats, tmp_path: Path) -> Iterator[Any]:
    with new_nats(tmp_path) as nats:
        env = {**nats.env, "EDGE_RAG_DATA_DIR": str(tmp_path / "rag")}
        rag = launch("rag", tmp_path, env)
        router = launch(
            "router", tmp_path, {**nats.env, "EDGE_ROUTER_RAG_TIMEOUT_S": str(RAG_TIMEOUT_S)}
        )
        try:
            yield router, rag, lambda: launch("rag", tmp_path, env)
        finally:
            rag.proc.popen.send_signal(signal.SIGCONT)
            router.proc.stop()
            rag.proc.stop()


def test_a_stalled_rag_worker_gets_503_after_the_rag_timeout(stack) -> None:
    """SIGSTOP (connected, answering nothing): an embedding request waits out
    rag_timeout_s, then 503 with Retry-After; resumed, the worker answers again."""
    router, rag, _ = stack
    body = {"model": "all-minilm-l6-v2", "input": "hello"}
    assert httpx.post(f"{router.url}/v1/embeddings", json=body, timeout=30).status_code == 200
    rag.proc.popen.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    response = httpx.post(f"{router.url}/v1/embeddings", json=body, timeout=30)
    waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert RAG_TIMEOUT_S <= waited < RAG_TIMEOUT_S + 5
    rag.proc.popen.send_signal(signal.SIGCONT)
    assert httpx.post(f"{router.url}/v1/embeddings", json=body, timeout=30).status_code == 200


def test_kill_9_mid_ingest_ends_the_stream_and_reingest_stores_each_chunk_once(stack) -> None:
    """kill -9 of the rag worker while a streamed ingest runs: the stream ends with an error
    event within seconds (not a hang); a restarted worker ingests the same files again with
    every document once and search working."""
    router, rag, restart = stack
    big = "\n\n".join(
        f"Paragraph {i}: " + "the bees fly over the meadow. " * 30 for i in range(400)
    )
    files = [("file", ("meadow.md", big.encode(), "text/markdown"))]
    files += [("file", (p.name, p.read_bytes(), "text/plain")) for p in sorted(CORPUS.iterdir())]
    data = {"collection": "crash", "stream": "true"}
    events: list[str] = []
    with httpx.Client(base_url=router.url, timeout=60) as client:
        with client.stream("POST", "/v1/rag/ingest", files=files, data=data) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                events.append(line)
                if "rag.ingest.progress" in line and rag.proc.popen.poll() is None:
                    killed_at = time.monotonic()
                    rag.proc.kill()
        ended_after = time.monotonic() - killed_at
        assert "error" in events[-2] or "error" in events[-1], events[-3:]
        assert ended_after < 10
        rag = restart()
        again = client.post("/v1/rag/ingest", files=files, data={"collection": "crash"})
        assert again.status_code == 200, again.text
        assert {f["outcome"] for f in again.json()["files"]} <= {"added", "replaced", "unchanged"}
        listed = client.get("/v1/rag/collections/crash").json()
        sources = [d["source"] for d in listed["documents"]]
        assert sorted(sources) == sorted({f[1][0] for f in files})  # each document once
        assert listed["chunks"] == sum(d["chunks"] for d in listed["documents"])
        hits = client.post(
            "/v1/rag/search", json={"collection": "crash", "query": "queen bee eggs"}
        ).json()["hits"]
        assert hits[0]["source"] == "bees.md"
    rag.proc.stop()


def test_a_client_that_leaves_a_plain_ingest_cancels_it(stack, wait_for) -> None:
    """A non-streamed ingest whose client gives up (read timeout) is cancelled on the
    worker (ingests run one at a time: a left-over one would hold the next for a minute)."""
    router, _, _ = stack
    big = "\n\n".join(f"Paragraph {i}: " + "lava cools into basalt. " * 40 for i in range(2000))
    with httpx.Client(base_url=router.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/v1/rag/ingest",
                files=[("file", ("big.md", big.encode(), "text/markdown"))],
                data={"collection": "left"},
                timeout=2,
            )
        started = time.monotonic()
        small = client.post(
            "/v1/rag/ingest",
            files=[("file", ("bees.md", (CORPUS / "bees.md").read_bytes(), "text/plain"))],
            data={"collection": "left"},
            timeout=60,
        )
        waited = time.monotonic() - started
        assert small.status_code == 200, small.text
        assert waited < 15, waited  # the left ingest (minutes of work) was stopped

        # the cancelled one's pending chunks are taken back out as its last batch ends
        def only_bees() -> dict | None:
            listed = client.get("/v1/rag/collections/left").json()
            return listed if [d["source"] for d in listed["documents"]] == ["bees.md"] else None

        listed = wait_for(only_bees, 15)
        assert listed["chunks"] == listed["documents"][0]["chunks"]
