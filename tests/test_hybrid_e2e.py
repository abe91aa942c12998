"""`model="auto"` through the official SDK, where the "cloud" is a second real model server:
llama-cpp-python's own OpenAI server on the same GGUF. Both routes are seen."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_common.stack import free_port, start_llama_cpp_server
from edge_llm.backends.llamacpp import bundled_model
from openai import OpenAI


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with (Path(tmp_path_factory.mktemp("llama-server")) / "server.log").open("wb") as log:
        proc = start_llama_cpp_server(port, bundled_model(), "board2-smollm", output=log)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(router_with, llama_server: str) -> Iterator[OpenAI]:
    upstream = {"name": "board2", "base_url": llama_server, "models": ["board2-smollm"]}
    url = router_with(EDGE_ROUTER_UPSTREAMS=json.dumps([upstream])).url
    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def ask(client: OpenAI, content: str, **kw: object) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}], max_tokens=12, **kw
    )


def test_auto_sends_simple_prompts_local(client: OpenAI, model: str) -> None:
    """A lookup stays on the local worker."""
    raw = ask(client, "What is the capital of France?")
    assert raw.headers["x-edge-route"] == "local"
    assert raw.headers["x-edge-route-reason"] == "simple prompt"
    assert raw.parse().model == model


def test_auto_sends_hard_prompts_to_the_cloud(client: OpenAI) -> None:
    """A code-generation request goes to the upstream, whose answer comes back through us."""
    raw = ask(client, "Implement a Python function that merges two sorted lists.")
    assert raw.headers["x-edge-route"] == "cloud"
    assert raw.headers["x-edge-route-reason"].startswith("hard prompt (code generation")
    completion = raw.parse()
    assert completion.model == "board2-smollm"  # the upstream's own answer, relayed
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0


def test_auto_streams_from_the_cloud(client: OpenAI) -> None:
    """Streaming a hard prompt relays the upstream's chunks as they come."""
    raw = ask(client, "Write code for a small Flask API module.", stream=True)
    assert raw.headers["x-edge-route"] == "cloud"
    chunks = list(raw.parse())
    assert {c.model for c in chunks} == {"board2-smollm"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
