"""Structured output on a runtime without grammars (the RKLLM double): an answer that fails
its schema twice makes `auto` go to the cloud, saying why; a pinned request gets a 502."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_openai import FakeOpenAI

MODEL = "qwen-npu"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def npu_router(rkllm_files, launch, new_nats, tmp_path_factory, cloud: FakeOpenAI) -> Iterator[str]:
    root = Path(tmp_path_factory.mktemp("npu-json"))
    spec = {**rkllm_files["spec"], "id": MODEL}
    upstreams = [{"name": "fake", "base_url": cloud.url, "models": ["cloud-small"]}]
    with new_nats(root) as nats:
        env = {**nats.env, "EDGE_LLM_MODELS": json.dumps([spec])}
        worker = launch("llm", root, env)
        router = launch("router", root, {**env, "EDGE_ROUTER_UPSTREAMS": json.dumps(upstreams)})
        yield router.url
        router.proc.stop()
        worker.proc.stop()


def body(model: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
        },
    }


async def test_invalid_json_twice_goes_to_the_cloud(npu_router: str, cloud: FakeOpenAI) -> None:
    """The double's answer is no JSON: checked, generated again, then `auto` falls back to
    the cloud with the reason in x-edge-route-reason."""
    async with httpx.AsyncClient(base_url=npu_router, timeout=30) as http:
        got = await http.post("/v1/chat/completions", json=body("auto"))
    assert got.status_code == 200
    assert got.headers["x-edge-route"] == "cloud"
    reason = got.headers["x-edge-route-reason"]
    assert "local failed, fell back to cloud" in reason
    assert "did not follow response_format" in reason
    assert cloud.received[-1].body["response_format"] == body("auto")["response_format"]


async def test_pinned_local_gets_a_bad_gateway(npu_router: str) -> None:
    """Pinned to the NPU model, the same request ends in a 502 `invalid_output`."""
    async with httpx.AsyncClient(base_url=npu_router, timeout=30) as http:
        got = await http.post("/v1/chat/completions", json=body(MODEL))
    assert got.status_code == 502
    assert got.json()["error"]["code"] == "invalid_output"
