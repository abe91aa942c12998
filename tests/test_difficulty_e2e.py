"""`auto` judges difficulty by meaning, on real processes: a bus, the rag worker (the bundled
MiniLM on onnxruntime) whose embeddings feed the router's classifier, a router with a fake
cloud, and a stand-in llm that echoes. Without a rag worker the keyword score decides and
/v1/route/explain says so."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from stand_in import echo, stand_in

TAX_DE = (
    "Ich habe eine vermietete Eigentumswohnung und bin nebenbei selbständig. Wie setze ich "
    "die Abschreibung und die Werbungskosten ab, und lohnt sich die Kleinunternehmerregelung?"
)
HELLO = "hi, how are you?"


def chat(text: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


async def _gateway(nats, launch, root, cloud, *, rag: bool) -> AsyncIterator[str]:
    upstream = {"name": "fake", "base_url": cloud.url, "models": ["cloud-small"], "attempts": 1}
    env = {**nats.env, "EDGE_ROUTER_UPSTREAMS": json.dumps([upstream])}
    # a busy test machine must not turn the classifier into the fallback: that is tested apart
    env["EDGE_ROUTER_POLICY"] = json.dumps({"difficulty_budget_ms": 2000})
    worker = (
        launch("rag", root, {**nats.env, "EDGE_RAG_DATA_DIR": str(root / "rag")}) if rag else None
    )
    router = launch("router", root, env)
    try:
        async with stand_in(nats, "echo", echo):
            yield router.url
    finally:
        router.proc.stop()
        if worker:
            worker.proc.stop()


@pytest.fixture(scope="module")
async def with_rag(new_nats, launch, tmp_path_factory, cloud) -> AsyncIterator[str]:
    root = tmp_path_factory.mktemp("difficulty")
    with new_nats(root) as nats:
        async for url in _gateway(nats, launch, root, cloud, rag=True):
            yield url


@pytest.fixture(scope="module")
async def without_rag(new_nats, launch, tmp_path_factory, cloud) -> AsyncIterator[str]:
    root = tmp_path_factory.mktemp("difficulty-no-rag")
    with new_nats(root) as nats:
        async for url in _gateway(nats, launch, root, cloud, rag=False):
            yield url


async def test_auto_routes_by_the_classifier_and_explain_shows_why(with_rag: str) -> None:
    """A German tax question goes to the cloud and a greeting stays local, each by the
    classifier's probability over the rag worker's embedding; explain shows it, the
    threshold and the signal."""
    async with httpx.AsyncClient(base_url=with_rag, timeout=60) as client:
        hard = await client.post("/v1/chat/completions", json=chat(TAX_DE))
        easy = await client.post("/v1/chat/completions", json=chat(HELLO))
        explained = (await client.post("/v1/route/explain", json=chat(TAX_DE))).json()
    assert hard.status_code == easy.status_code == 200, (hard.text, easy.text)
    assert hard.headers["x-edge-route"] == "cloud"
    assert hard.headers["x-edge-route-reason"].startswith("hard prompt (classifier 0.")
    assert easy.headers["x-edge-route"] == "local"
    assert easy.headers["x-edge-route-reason"].startswith("simple prompt (classifier 0.")
    d = explained["difficulty"]
    assert (d["signal"], d["hard"]) == ("classifier", True)
    assert d["probability"] >= d["threshold"] > 0
    assert d["classifier"].startswith("all-minilm-l6-v2 embedding in ")
    assert explained["features"]["difficulty"] == d["probability"]
    assert explained["decision"]["target"] == "cloud"
    # the keyword score alone would have kept it local: no English markers
    assert explained["complexity"]["score"] < explained["complexity"]["threshold"]


async def test_without_a_rag_worker_the_keyword_score_decides(without_rag: str) -> None:
    """No embedder running: the same German question falls back to the keyword score (and
    stays local), explain names the fallback and why; a keyword-hard prompt still goes to
    the cloud."""
    async with httpx.AsyncClient(base_url=without_rag, timeout=60) as client:
        explained = (await client.post("/v1/route/explain", json=chat(TAX_DE))).json()
        hard = await client.post(
            "/v1/chat/completions",
            json=chat("Think step by step and analyse the trade-offs of microservices."),
        )
    d = explained["difficulty"]
    assert (d["signal"], d["probability"], d["hard"]) == ("keywords", None, False)
    assert d["classifier"].startswith("unavailable, keyword score used: embedder all-minilm")
    assert explained["features"]["difficulty"] is None
    assert explained["decision"]["reasons"] == ["simple prompt"]
    assert hard.headers["x-edge-route"] == "cloud"
    assert hard.headers["x-edge-route-reason"] == "hard prompt (multi-step reasoning)"
