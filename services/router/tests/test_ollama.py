"""The Ollama <-> OpenAI translation (edge_router.ollama), on its own."""

import base64
import struct
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from edge_common.protocol import rag as rag_wire
from edge_router import ollama
from edge_router.errors import (
    BadGateway,
    InvalidRequest,
    UpstreamAnswer,
    model_not_found,
    unavailable,
)
from edge_router.metrics import Observation

MAX = 4096
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 20).decode()


def chat(**body: object) -> ollama.ChatBody:
    return msgspec.convert({"model": "m", **body}, ollama.ChatBody)


def generate(**body: object) -> ollama.GenerateBody:
    return msgspec.convert({"model": "m", **body}, ollama.GenerateBody)


def test_chat_maps_options_format_and_streams_by_default() -> None:
    """options become OpenAI's sampling fields, `format: json` json_object, and an unset
    `stream` streams with usage asked for (the last line carries the counts)."""
    raw = ollama.chat_request(
        chat(
            model="smollm:latest",
            messages=[{"role": "user", "content": "hi"}],
            format="json",
            options={
                "temperature": 0.2,
                "top_p": 0.9,
                "num_predict": 7,
                "stop": ["\n"],
                "seed": 3,
                "num_ctx": 2048,
                "top_k": 40,
            },
            keep_alive="5m",
        ),
        MAX,
    )
    assert raw == {
        "model": "smollm",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["\n"],
        "response_format": {"type": "json_object"},
    }
    request = ollama.openai_request(raw)
    assert (request.max_tokens, request.stream) == (7, True)


def test_schema_format_is_strict_json_schema_and_no_limit_is_dropped() -> None:
    """A JSON-schema `format` is a strict json_schema; num_predict -1 sets no max_tokens."""
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    raw = ollama.chat_request(
        chat(
            messages=[{"role": "user", "content": "x"}],
            format=schema,
            stream=False,
            options={"num_predict": -1},
        ),
        MAX,
    )
    assert raw["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "ollama_format", "schema": schema, "strict": True},
    }
    assert not {"max_tokens", "stream_options"} & raw.keys()
    assert raw["stream"] is False


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": -1}, "options.temperature"),
        ({"top_p": 2}, "options.top_p"),
        ({"num_predict": -3}, "options.num_predict"),
        ({"seed": 2**64}, "options.seed"),
    ],
)
def test_absurd_options_are_refused_naming_the_option(options: dict, param: str) -> None:
    """Out-of-range options fail to decode, naming the Ollama field."""
    with pytest.raises(msgspec.ValidationError, match=param.replace(".", r"\.")):
        chat(messages=[], options=options)


@pytest.mark.parametrize("n", [0, MAX + 1, 10**9])
def test_num_predict_beyond_the_bound_is_a_400(n: int) -> None:
    """num_predict 0 or above the router's max_tokens bound: a 400 naming it."""
    with pytest.raises(InvalidRequest) as caught:
        ollama.chat_request(
            chat(messages=[{"role": "user", "content": "x"}], options={"num_predict": n}), MAX
        )
    assert caught.value.param == "options.num_predict"


def test_images_become_data_url_parts_with_their_media_type() -> None:
    """Bare base64 images become image parts of the user's message (type from the bytes)."""
    raw = ollama.chat_request(
        chat(messages=[{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}]),
        MAX,
    )
    assert raw["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]
    ollama.openai_request(raw)  # an OpenAI request the router takes


def test_images_outside_user_messages_are_refused() -> None:
    """Images on an assistant message: 400 naming it."""
    with pytest.raises(InvalidRequest) as caught:
        ollama.messages(
            chat(messages=[{"role": "assistant", "content": "", "images": [PNG]}]).messages
        )
    assert caught.value.param == "messages[0].images"


def test_tool_round_trip_pairs_results_with_calls_by_name() -> None:
    """Assistant tool_calls get ids and JSON-string arguments; tool messages answer them by
    tool_name (else in order); tools pass through as OpenAI's."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    raw = ollama.chat_request(
        chat(
            tools=tools,
            messages=[
                {"role": "user", "content": "weather in Paris and time?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "clock", "arguments": {}}},
                        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    ],
                },
                {"role": "tool", "content": "sunny", "tool_name": "weather"},
                {"role": "tool", "content": "noon"},
            ],
        ),
        MAX,
    )
    assert raw["tools"] == tools
    assistant, weather, clock = raw["messages"][1:]
    assert assistant["content"] is None
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert assistant["tool_calls"][1]["function"] == {
        "name": "weather",
        "arguments": '{"city":"Paris"}',
    }
    assert weather == {"role": "tool", "content": "sunny", "tool_call_id": "call_1_1"}
    assert clock == {"role": "tool", "content": "noon", "tool_call_id": "call_1_0"}
    ollama.openai_request(raw)


def test_a_tool_message_without_a_call_is_refused() -> None:
    """A tool result nothing asked for: 400."""
    with pytest.raises(InvalidRequest):
        ollama.messages(chat(messages=[{"role": "tool", "content": "x"}]).messages)


def test_generate_is_system_then_prompt_and_refuses_raw_templates() -> None:
    """generate: `system` then the prompt as the user's turn; suffix/template/raw/context: 400."""
    raw = ollama.generate_request(generate(prompt="p", system="s", images=[PNG]), MAX)
    assert raw["messages"][0] == {"role": "system", "content": "s"}
    assert raw["messages"][1]["content"][0] == {"type": "text", "text": "p"}
    for field, value in (
        ("suffix", "x"),
        ("template", "{{ .Prompt }}"),
        ("raw", True),
        ("context", [1, 2]),
    ):
        with pytest.raises(InvalidRequest) as caught:
            ollama.generate_request(generate(prompt="p", **{field: value}), MAX)
        assert (caught.value.param, caught.value.code) == (field, "unsupported")


def _chunk(content: str | None = None, finish: str | None = None, **delta: object) -> bytes:
    choice = {"index": 0, "delta": {"content": content, **delta}, "finish_reason": finish}
    return msgspec.json.encode({"object": "chat.completion.chunk", "choices": [choice]})


def test_stream_becomes_content_lines_then_a_done_line_with_counts() -> None:
    """Role chunk: no line; content: a line each; the usage chunk: counts on the done line,
    durations in ns that add up."""
    reply = ollama.Reply("m", "chat", time.perf_counter_ns())
    lines = [
        *reply.chunk(_chunk("", role="assistant")),
        *reply.chunk(_chunk("Hel")),
        *reply.chunk(_chunk("lo")),
        *reply.chunk(_chunk(finish="length")),
    ]
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    lines += reply.chunk(msgspec.json.encode({"choices": [], "usage": usage}))
    lines += reply.end()
    decoded = [msgspec.json.decode(line) for line in lines]
    assert [d["message"]["content"] for d in decoded] == ["Hel", "lo", ""]
    assert [d["done"] for d in decoded] == [False, False, True]
    last = decoded[-1]
    assert last["done_reason"] == "length"
    assert (last["prompt_eval_count"], last["eval_count"]) == (5, 2)
    assert last["total_duration"] == last["prompt_eval_duration"] + last["eval_duration"]
    assert last["created_at"].endswith("Z")
    assert last["model"] == "m"


def test_streamed_tool_call_pieces_arrive_whole_before_done() -> None:
    """OpenAI's tool-call deltas (name first, arguments in pieces) become one Ollama call."""
    reply = ollama.Reply("m", "chat", time.perf_counter_ns())
    first = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    rest = [{"index": 0, "function": {"arguments": part}} for part in ('{"a"', ": 1}")]
    for call in (first, *rest):
        assert reply.chunk(_chunk(tool_calls=[call])) == []
    reply.chunk(_chunk(finish="tool_calls"))
    calls, done = (msgspec.json.decode(line) for line in reply.end())
    assert calls["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert (calls["done"], done["done"], done["done_reason"]) == (False, True, "stop")


def test_whole_completion_for_generate_and_chat_with_tool_calls() -> None:
    """A completion is one object: generate's `response`, chat's message with tool calls."""
    completion = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": "ok",
                    "tool_calls": [
                        {
                            "id": "x",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"q": "s"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    body = msgspec.json.encode(completion)
    gen = msgspec.json.decode(ollama.Reply("m", "generate", 0).whole(body))
    assert (gen["response"], gen["done"], gen["eval_count"]) == ("ok", True, 1)
    assert "message" not in gen
    got = msgspec.json.decode(ollama.Reply("m", "chat", 0).whole(body))
    assert got["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"q": "s"}}}]


def test_tool_arguments_that_are_not_an_object_are_a_bad_gateway() -> None:
    """A model's arguments that are no JSON object cannot be an Ollama call: 502."""
    bad = {
        "choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]}}]
    }
    with pytest.raises(BadGateway):
        ollama.Reply("m", "chat", 0).whole(msgspec.json.encode(bad))


def test_errors_in_ollama_words() -> None:
    """Unknown model: Ollama's `model "x" not found`; an upstream's refusal: its message."""
    assert ollama.error_message(model_not_found("llama9")) == 'model "llama9" not found'
    upstream = UpstreamAnswer(400, b'{"error": {"message": "bad tools", "type": "x"}}')
    assert ollama.error_message(upstream) == "bad tools"
    assert ollama.error_message(UpstreamAnswer(400, b"plain")) == "plain"


def test_vectors_slice_rows() -> None:
    """The worker's float32 rows become one list of floats per input."""
    rows = struct.pack("<4f", 1.0, 0.0, 0.0, 1.0)  # little-endian, as on the wire
    embedded = rag_wire.Embedded(model="e", dimension=2, data=rows, tokens=[1, 1])
    assert ollama.vectors(embedded) == [[1.0, 0.0], [0.0, 1.0]]


async def test_a_failure_mid_stream_is_the_last_line() -> None:
    """Once streaming, a failure is a last NDJSON line `{"error": ...}`, as Ollama sends it."""

    async def payloads() -> AsyncIterator[bytes]:
        yield _chunk("Hel")
        raise unavailable("The llm worker went away.")

    reply = ollama.Reply("m", "chat", time.perf_counter_ns())
    seen = Observation("m")
    lines = [line async for line in ollama._ndjson(payloads(), reply, seen)]
    assert [msgspec.json.decode(line) for line in lines][1:] == [
        {"error": "The llm worker went away."}
    ]
    assert all(line.endswith(b"\n") for line in lines)
