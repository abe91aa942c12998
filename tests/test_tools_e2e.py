"""Tools and structured output end to end: the openai SDK -> router -> NATS -> the real
llama.cpp worker (SmolLM2-135M on the CPU), and through a fake cloud upstream."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest
from fake_openai import CALL_ARGUMENTS, FakeOpenAI
from openai import AsyncOpenAI, BadRequestError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def calls_of_stream(chunks: list[Any]) -> tuple[list[dict[str, str]], str | None]:
    """The calls a stream's tool-call deltas reassemble to, checking OpenAI's shape: the
    first delta of a call brings index, id, type and name with empty arguments; the rest
    only arguments."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                assert delta.id
                assert delta.type == "function"
                assert delta.function.name
                assert delta.function.arguments == ""
                calls[delta.index] = {"name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None
                assert delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
    return [calls[i] for i in sorted(calls)], finish


def calls_of(message: Any) -> list[dict[str, str]]:
    return [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in message.tool_calls or []
    ]


async def round_trip(client: AsyncOpenAI, model: str, **first: Any) -> tuple[Any, Any]:
    """A call, its result as a tool message, and the model's answer to it."""
    called = await client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, TIME], max_tokens=48, **first
    )
    message = called.choices[0].message
    assert called.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    call = message.tool_calls[0]
    assert call.id
    assert call.type == "function"
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answer = await client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER, TIME], max_tokens=16, temperature=0
    )
    return called, answer


async def test_local_round_trip_named(aclient: AsyncOpenAI, model: str) -> None:
    """Forced by name, the local model calls the tool with arguments valid for its schema;
    after the tool's result it answers in text."""
    called, answer = await round_trip(aclient, model, tool_choice=NAMED, temperature=0)
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")


async def test_local_stream_reassembles_to_the_same_call(aclient: AsyncOpenAI, model: str) -> None:
    """Under tool_choice required the streamed deltas reassemble to the non-streamed call."""
    options: dict[str, Any] = {
        "model": model,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
        "seed": 7,
        "max_tokens": 48,
    }
    whole = await aclient.chat.completions.create(**options)
    stream = await aclient.chat.completions.create(**options, stream=True)
    calls, finish = calls_of_stream([c async for c in stream])
    assert finish == "tool_calls"
    assert calls == calls_of(whole.choices[0].message)
    assert calls[0]["name"] == "get_weather"


async def test_local_auto_is_a_call_or_text(aclient: AsyncOpenAI, model: str) -> None:
    """Under `auto` the model may call or answer; either way the answer has OpenAI's shape."""
    got = await aclient.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER], max_tokens=24, temperature=0
    )
    choice = got.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == "get_weather"
        json.loads(choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert isinstance(choice.message.content, str)


SCHEMAS = {
    "enums": {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["sentiment", "confidence"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "age": {"type": "integer"},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            },
            "verified": {"type": "boolean"},
        },
        "required": ["person", "verified"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "colours": {
                "type": "array",
                "items": {"type": "string", "enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "sizes": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
        },
        "required": ["colours", "sizes"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("name", SCHEMAS)
async def test_json_schema_answers_validate(aclient: AsyncOpenAI, model: str, name: str) -> None:
    """A json_schema answer of the local model (grammar-constrained) validates."""
    got = await aclient.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Ada, 36, loves red; the review was great."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True},
        },
        max_tokens=64,
        temperature=0,
    )
    assert got.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(got.choices[0].message.content), SCHEMAS[name])


def test_models_say_what_each_model_can_do(http: httpx.Client, model: str) -> None:
    """/v1/models gives the local model's window, capabilities, where it runs and whether
    it is loaded; aliases carry none of them."""
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    local = models[model]
    assert local["context_window"] == 2048
    assert local["capabilities"] == {
        "vision": False,
        "tools": True,
        "json": True,
        "embeddings": False,
    }
    assert (local["runs_on"], local["loaded"]) == ("cpu", True)
    assert models["auto"]["capabilities"] is None


@pytest.fixture(scope="module")
def cloud_router(router_with, cloud: FakeOpenAI) -> str:
    upstreams = [{"name": "fake", "base_url": cloud.url, "models": ["cloud-small"]}]
    return router_with(EDGE_ROUTER_UPSTREAMS=json.dumps(upstreams)).url


@pytest.fixture
async def cloud_client(cloud_router: str) -> AsyncIterator[AsyncOpenAI]:
    """The fake upstream answers on the test's event loop: the client must be async."""
    async with AsyncOpenAI(base_url=f"{cloud_router}/v1", api_key="unused", max_retries=0) as c:
        yield c


async def test_cloud_round_trip_and_stream(cloud_client: AsyncOpenAI, cloud: FakeOpenAI) -> None:
    """Through the cloud: tools reach the upstream exactly, the call comes back whole or
    streamed (the same call), and the tool's result gets an answer."""
    called, answer = await round_trip(cloud_client, "cloud-small", tool_choice=NAMED)
    assert cloud.received[-2].body["tools"] == [WEATHER, TIME]
    assert cloud.received[-2].body["tool_choice"] == NAMED
    assert calls_of(called.choices[0].message) == [
        {"name": "get_weather", "arguments": CALL_ARGUMENTS}
    ]
    assert cloud.received[-1].body["messages"][-1]["role"] == "tool"
    assert answer.choices[0].message.content == "Hello from the cloud."
    stream = await cloud_client.chat.completions.create(
        model="cloud-small", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True
    )
    calls, finish = calls_of_stream([c async for c in stream])
    assert (calls, finish) == (calls_of(called.choices[0].message), "tool_calls")


async def test_a_schema_no_grammar_can_follow_is_a_400(aclient: AsyncOpenAI, model: str) -> None:
    """A json_schema the grammar converter cannot use is the client's error, not a 500."""
    with pytest.raises(BadRequestError, match="cannot be used"):
        await aclient.chat.completions.create(
            model=model,
            messages=ASK,
            max_tokens=4,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
            },
        )
