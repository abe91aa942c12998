"""Tools and response_format in the router: checks, translation to the llm wire, and
OpenAI's tool-call answers (streamed and whole) from wire events."""

from collections.abc import AsyncIterator

import msgspec
import pytest
from edge_common.protocol import llm as llm_wire
from edge_router import protocol as p
from edge_router.answers import chunks, collect
from edge_router.checks import check
from edge_router.errors import InvalidRequest
from edge_router.settings import InputLimits
from edge_router.translate import to_wire

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def req(**body: object) -> p.ChatCompletionRequest:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return msgspec.json.decode(msgspec.json.encode(base | body), type=p.ChatCompletionRequest)


def test_tools_choice_format_and_tool_turns_reach_the_wire() -> None:
    """Tools, a named choice, a json_schema format, past calls and tool results are typed
    wire fields."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = to_wire(
        req(
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            tools=[TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema, "strict": True},
            },
        ),
        "m",
        "rid",
    )
    assert out.tools == [llm_wire.Tool(name="get_weather", parameters={"type": "object"})]
    assert (out.tool_choice, out.tool_name) == ("named", "get_weather")
    assert out.response_format == llm_wire.ResponseFormat(
        type="json_schema", schema=schema, strict=True
    )
    assert out.messages[1].tool_calls == [
        llm_wire.ToolCall(id="c1", name="get_weather", arguments='{"city": "x"}')
    ]
    assert (out.messages[2].role, out.messages[2].tool_call_id) == ("tool", "c1")
    plain = to_wire(req(response_format={"type": "text"}, tool_choice="none"), "m", "r")
    assert (plain.response_format, plain.tools) == (None, [])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls",
        ),
    ],
)
def test_malformed_tool_fields_are_refused(body: dict, param: str) -> None:
    """What OpenAI would refuse in tools, tool_choice, response_format and past calls is a
    400 naming the field, before any routing."""
    with pytest.raises(InvalidRequest) as refused:
        check(req(**body), InputLimits())
    assert (refused.value.param or "").startswith(param)


async def events(
    *items: llm_wire.Delta | llm_wire.Done,
) -> AsyncIterator[llm_wire.Delta | llm_wire.Done]:
    for item in items:
        yield item


CALL = [
    llm_wire.Delta(
        text="",
        tool_calls=[
            llm_wire.ToolCallPiece(index=0, id="call_1", name="get_weather"),
            llm_wire.ToolCallPiece(index=0, arguments='{"city":'),
            llm_wire.ToolCallPiece(index=0, arguments=' "Oslo"}'),
        ],
    ),
    llm_wire.Done(finish_reason="tool_calls", prompt_tokens=5, completion_tokens=9),
]


async def test_tool_call_chunks_and_completion() -> None:
    """Streamed: a delta per piece, id, type and name first with empty arguments, then only
    arguments, and finish_reason tool_calls; whole: the call assembled and content null."""
    got = [msgspec.to_builtins(c) async for c in chunks(events(*CALL), "id", "m", False)]
    assert [c["choices"][0]["delta"] for c in got[1:]] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"arguments": "", "name": "get_weather"},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]},
        {},
    ]
    assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"
    whole = msgspec.to_builtins(await collect(events(*CALL), "m", "r"))
    assert whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    text = [
        llm_wire.Delta(text="hi"),
        llm_wire.Done(finish_reason="stop", prompt_tokens=1, completion_tokens=1),
    ]
    plain = msgspec.to_builtins(await collect(events(*text), "m", "r"))
    assert "tool_calls" not in plain["choices"][0]["message"]  # absent, as OpenAI answers
