"""The Ollama API with the official `ollama` Python client, unchanged, against real processes:
a router with API keys and a fake cloud, the session's llm worker (llama.cpp), and a rag
worker for embeddings. Chat and generate run through the same routing as /v1 (same answer
for the same greedy request); errors come back in Ollama's shape."""

import base64
import io
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import pytest
from api_keys import make_key
from fake_openai import CALL_ARGUMENTS
from openai import AsyncOpenAI
from PIL import Image

EMBEDDER = "all-minilm-l6-v2"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 12}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def gateway(router_with, launch, stack, cloud, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(router URL, keys by name, the rag worker) on the session's bus and llm worker."""
    root = tmp_path_factory.mktemp("ollama")
    keys_file = root / "keys.json"
    keys = {
        "app": make_key(keys_file, "app", "--scope", "chat", "--scope", "embeddings"),
        "embedder": make_key(keys_file, "embedder", "--scope", "embeddings"),
    }
    rag = launch("rag", root, {**stack.nats.env, "EDGE_RAG_DATA_DIR": str(root / "rag")})
    upstream = {
        "name": "fake",
        "base_url": cloud.url,
        "models": ["gpt-x"],
        "vision_models": ["gpt-x-vision"],
        "attempts": 1,
    }
    router = router_with(
        EDGE_ROUTER_KEYS_FILE=str(keys_file), EDGE_ROUTER_UPSTREAMS=json.dumps([upstream])
    )
    yield router.url, keys
    rag.proc.stop()


def client(gateway: Any, key: str = "app", **headers: str) -> ollama.AsyncClient:
    url, keys = gateway
    return ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {keys[key]}", **headers})


@pytest.fixture
async def oc(gateway: Any) -> AsyncIterator[ollama.AsyncClient]:
    async with client(gateway) as c:
        yield c


async def test_chat_not_streamed_is_the_v1_answer(gateway: Any, oc, model: str) -> None:
    """stream=false: one ChatResponse with Ollama's fields, the same text and counts as the
    same greedy request on /v1/chat/completions (one routing path)."""
    got = await oc.chat(model=model, messages=ASK, stream=False, options=GREEDY)
    url, keys = gateway
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key=keys["app"], max_retries=0) as sdk:
        want = await sdk.chat.completions.create(
            model=model, messages=ASK, temperature=0, seed=1, max_tokens=12
        )
    assert got.model == model
    assert got.done is True
    assert got.message.role == "assistant"
    assert got.message.content == want.choices[0].message.content
    assert got.done_reason == {"stop": "stop", "length": "length"}[want.choices[0].finish_reason]
    assert got.prompt_eval_count == want.usage.prompt_tokens
    assert got.eval_count == want.usage.completion_tokens
    assert got.total_duration >= got.prompt_eval_duration + got.eval_duration > 0
    assert got.created_at.endswith("Z")


async def test_chat_streamed_by_default(oc, model: str) -> None:
    """A stream of NDJSON parts: text parts with done=false, then one done part with the
    counts; the text is the unstreamed answer's."""
    whole = await oc.chat(model=model, messages=ASK, stream=False, options=GREEDY)
    parts = [
        part async for part in await oc.chat(model=model, messages=ASK, stream=True, options=GREEDY)
    ]
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count
    assert parts[-1].done_reason == whole.done_reason


async def test_raw_stream_is_ndjson_by_default(gateway: Any, model: str) -> None:
    """Without `stream`, Ollama's default: application/x-ndjson, one JSON object a line."""
    url, keys = gateway
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        response = await http.post(
            "/api/generate",
            json={"model": model, "prompt": "Hi", "options": {"num_predict": 3}},
            headers={"authorization": f"Bearer {keys['app']}"},
        )
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["x-edge-route"] == "local"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 3
    assert lines[-1]["done_reason"] == "length"


async def test_generate_stream_and_not(oc, model: str) -> None:
    """generate: `response` text, whole or in parts that add up to it."""
    whole = await oc.generate(model=model, prompt="Name a colour.", options=GREEDY, stream=False)
    assert whole.response.strip()
    assert whole.done is True
    parts = [
        p
        async for p in await oc.generate(
            model=model, prompt="Name a colour.", options=GREEDY, stream=True
        )
    ]
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].done is True


async def test_list_show_ps_version(gateway: Any, oc, model: str) -> None:
    """list: aliases, the local model, the embedder and the cloud model; show: capabilities
    and context window; ps: the resident local model; version: a version string."""
    names = {m.model for m in (await oc.list()).models}
    assert {"auto", "local", "cloud", model, EMBEDDER, "gpt-x"} <= names
    shown = await oc.show(model)
    assert "completion" in shown.capabilities
    assert shown.modelinfo["edge.context_length"] >= 2048
    assert (await oc.show(EMBEDDER)).capabilities == ["embedding"]
    await oc.chat(model=model, messages=ASK, stream=False, options={"num_predict": 1})
    assert model in {m.model for m in (await oc.ps()).models}
    url, keys = gateway
    async with httpx.AsyncClient(base_url=url) as http:
        version = await http.get(
            "/api/version", headers={"authorization": f"Bearer {keys['embedder']}"}
        )
    assert version.json()["version"].count(".") == 2


async def test_embed_and_legacy_embeddings(oc) -> None:
    """embed: one unit vector per input; the legacy endpoint gives the same vector."""
    got = await oc.embed(model=EMBEDDER, input=["bees make honey", "the sea is salty"])
    assert len(got.embeddings) == 2
    assert {len(v) for v in got.embeddings} == {384}
    assert math.isclose(math.fsum(x * x for x in got.embeddings[0]), 1.0, rel_tol=1e-3)
    assert got.embeddings[0] != got.embeddings[1]
    legacy = await oc.embeddings(model=EMBEDDER, prompt="bees make honey")
    assert legacy.embedding == pytest.approx(got.embeddings[0], abs=1e-6)


async def test_unknown_model_is_ollamas_404(oc) -> None:
    """An unknown model: 404 with `{"error": "model \\"x\\" not found"}`, chat and show."""
    with pytest.raises(ollama.ResponseError) as caught:
        await oc.chat(model="llama9:70b", messages=ASK, stream=False)
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "llama9:70b" not found'
    with pytest.raises(ollama.ResponseError) as caught:
        await oc.show("llama9")
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_predict": 10**9}, "num_predict"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 7}, "top_p"),
    ],
)
async def test_absurd_options_are_ollamas_400(oc, model: str, options: dict, named: str) -> None:
    """Absurd options: 400 with Ollama's error shape, naming the option."""
    with pytest.raises(ollama.ResponseError) as caught:
        await oc.chat(model=model, messages=ASK, stream=False, options=options)
    assert caught.value.status_code == 400
    assert named in caught.value.error


async def test_deep_json_and_bad_keys_in_ollamas_shape(gateway: Any, model: str) -> None:
    """JSON nested too deeply: 400; no key: 401; a key without `chat`: 403; all
    `{"error": "<string>"}`."""
    url, keys = gateway
    deep = '{"model": "m", "messages": [], "format": ' + '{"a": ' * 5000 + "1" + "}" * 5001
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        answers = [
            await http.post(
                "/api/chat",
                content=deep,
                headers={"authorization": f"Bearer {keys['app']}"},
            ),
            await http.post("/api/chat", json={"model": model, "messages": ASK}),
            await http.post(
                "/api/chat",
                json={"model": model, "messages": ASK},
                headers={"authorization": f"Bearer {keys['embedder']}"},
            ),
        ]
    assert [a.status_code for a in answers] == [400, 401, 403]
    for answer in answers:
        assert list(answer.json()) == ["error"]
        assert isinstance(answer.json()["error"], str)
    assert "nested too deeply" in answers[0].json()["error"]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip_through_the_cloud(oc, cloud, stream: bool) -> None:
    """Tools on a cloud model: passed on as OpenAI's tools; its call (streamed in pieces)
    comes back whole, arguments an object; the tool's result goes back paired with the call's
    id, and the cloud's answer ends the round."""
    ask = [{"role": "user", "content": "Weather in Paris?"}]

    async def chat(messages: list) -> tuple[str, list, Any]:
        if not stream:
            got = await oc.chat(model="gpt-x", messages=messages, tools=TOOLS, stream=False)
            return got.message.content, list(got.message.tool_calls or []), got
        parts = [
            p
            async for p in await oc.chat(model="gpt-x", messages=messages, tools=TOOLS, stream=True)
        ]
        calls = [c for p in parts for c in p.message.tool_calls or []]
        return "".join(p.message.content for p in parts), calls, parts[-1]

    _, calls, last = await chat(ask)
    assert cloud.received[-1].body["tools"] == TOOLS
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("weather", json.loads(CALL_ARGUMENTS))
    ]
    assert last.done is True
    reply = {"role": "assistant", "content": "", "tool_calls": calls}
    result = {"role": "tool", "content": "18 C and sunny", "tool_name": "weather"}
    text, calls, _ = await chat([*ask, reply, result])
    sent = cloud.received[-1].body["messages"]
    assert sent[-1]["tool_call_id"] == sent[-2]["tool_calls"][0]["id"]
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == json.loads(
        CALL_ARGUMENTS
    )
    assert (text, calls) == ("Hello from the cloud.", [])


async def test_tools_on_the_local_model_answer_or_are_refused(oc, model: str) -> None:
    """Tools on the local model: a call (arguments an object) or text when its card
    advertises tools; else a 400 naming tools, in Ollama's shape."""
    ask = [{"role": "user", "content": "Call the weather tool for the city Paris."}]
    if "tools" not in (await oc.show(model)).capabilities:
        with pytest.raises(ollama.ResponseError) as caught:
            await oc.chat(model=model, messages=ask, tools=TOOLS, stream=False)
        assert caught.value.status_code == 400
        assert "tools" in caught.value.error
        return
    got = await oc.chat(model=model, messages=ask, tools=TOOLS, stream=False, options=GREEDY)
    assert got.done is True
    calls = got.message.tool_calls or []
    assert all(c.function.name == "weather" for c in calls)
    assert all(isinstance(c.function.arguments, dict) for c in calls)
    assert calls or got.message.content


async def test_format_json_to_the_cloud_is_response_format(oc, cloud) -> None:
    """format json reaches a cloud model as response_format json_object, streamed with the
    usage the last line needs."""
    parts = [
        p
        async for p in await oc.chat(
            model="gpt-x", messages=ASK, format="json", stream=True, options={"num_predict": 9}
        )
    ]
    body = cloud.received[-1].body
    assert body["response_format"] == {"type": "json_object"}
    assert body["max_tokens"] == 9
    assert "".join(p.message.content for p in parts) == "Hello from the cloud."
    assert parts[-1].eval_count is not None


def _png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


async def test_images_take_the_image_path(oc, cloud, model: str) -> None:
    """Bare base64 `images` reach a cloud vision model as data-URL image parts; a local text
    model with no detector running refuses them (400, Ollama's shape)."""
    png = _png()
    ask = [{"role": "user", "content": "What colour is this?", "images": [png]}]
    got = await oc.chat(model="gpt-x-vision", messages=ask, stream=False)
    assert got.message.content == "Hello from the cloud."
    assert cloud.received[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "What colour is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    with pytest.raises(ollama.ResponseError) as caught:
        await oc.chat(model=model, messages=ask, stream=False)
    assert caught.value.status_code == 400
    assert "images" in caught.value.error


async def test_closing_stream_cancels_generation(gateway: Any, stack, model: str, wait_for) -> None:
    """A client that stops reading mid-stream: the worker's generation is cancelled."""
    oc = client(gateway, **{"x-request-id": "ollama-cancel"})
    stream = await oc.chat(
        model=model,
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        options={"num_predict": 1500},
        stream=True,
    )
    first = await anext(stream)
    assert first.done is False
    await stream.aclose()
    cancelled = wait_for(
        lambda: [
            e
            for e in stack.llm.log_events("llm.generation_cancelled")
            if e.get("request_id") == "ollama-cancel"
        ]
    )
    assert cancelled[0]["completion_tokens"] < 1500
