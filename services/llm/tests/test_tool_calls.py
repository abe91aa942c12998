"""The tool-call parser (edge_llm.tool_calls), the prompt rendering of tools, and grammars."""

import functools
import json
import time

import msgspec
import pytest
from edge_common.protocol.llm import ChatMessage, ChatRequest, ResponseFormat, Tool, ToolCall
from edge_llm import structured
from edge_llm.tool_calls import ToolCallParser, template_inputs

WEATHER = Tool(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
TIME = Tool(name="get_time")


def parse(pieces: list[str], complete: bool = True) -> tuple[str, list[tuple[str, str]]]:
    """Feed `pieces` one by one: (content, [(name, arguments)]), pieces reassembled."""
    parser = ToolCallParser([WEATHER, TIME])
    content, pieces_out = [], []
    for piece in pieces:
        text, got = parser.feed(piece)
        content.append(text)
        pieces_out += got
    text, got = parser.flush(complete)
    content.append(text)
    pieces_out += got
    calls: dict[int, list[str]] = {}
    for p in pieces_out:
        if p.id:
            assert p.id.startswith("call_")
            assert p.name
            assert not p.arguments
            calls[p.index] = [p.name, ""]
        else:
            assert not p.name
            calls[p.index][1] += p.arguments
    return "".join(content), [(n, a) for n, a in (calls[i] for i in sorted(calls))]


def chars(text: str) -> list[str]:
    return list(text)


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("split", [lambda t: [t], chars], ids=["whole", "char-by-char"])
def test_a_call_is_parsed_whole_or_split(split: object) -> None:
    """A Hermes call becomes one call with its JSON arguments, however the text is split."""
    content, calls = parse(split(CALL))  # type: ignore[operator]
    assert content == ""
    assert calls == [("get_weather", '{"city": "Paris"}')]


def test_text_then_two_calls_and_a_list() -> None:
    """Text before calls stays content; several blocks and a list in one block are calls
    in order; whitespace around calls is no content."""
    both = (
        '[{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {"tz": "UTC"}}]'
    )
    content, calls = parse(chars(f"Let me check.\n{CALL}\n<tool_call>{both}</tool_call>\n"))
    assert content == "Let me check."
    assert [n for n, _ in calls] == ["get_weather", "get_time", "get_time"]
    assert json.loads(calls[2][1]) == {"tz": "UTC"}


def test_plain_text_and_lookalike_tags_are_content() -> None:
    """Text with no call, including `<` and a partial tag at the end, passes unchanged."""
    text = "a < b and <tool_c is not a tag, nor <tool_call"
    assert parse(chars(text), complete=False) == (text, [])
    assert parse(["1 < 2"]) == ("1 < 2", [])


def test_a_call_in_a_think_block_is_no_call() -> None:
    """A call written while thinking is text; one after the think block is a call."""
    thought = f"<think>maybe {CALL}</think>"
    content, calls = parse(chars(thought + CALL))
    assert content == thought
    assert calls == [("get_weather", '{"city": "Paris"}')]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}',  # unbalanced
        '{"name": "get_weather", "arguments": "{\\"city\\": 1}"}',  # arguments not an object
        '{"name": "unknown", "arguments": {}}',  # no such tool
        '{"name": "get_weather", "arguments": {}, "extra": 1}',  # unknown key
        "get_weather(city='Paris')",
    ],
)
def test_malformed_calls_are_text(body: str) -> None:
    """A block that is not a strict call of a declared tool stays text, tags included."""
    text = f"<tool_call>{body}</tool_call>"
    assert parse(chars(text)) == (text, [])


def test_an_unclosed_call_counts_only_when_the_model_ended() -> None:
    """Complete JSON cut off by the end of sequence is a call; cut off by the budget, text."""
    open_call = CALL.removesuffix("\n</tool_call>")
    assert parse([open_call], complete=True)[1] == [("get_weather", '{"city": "Paris"}')]
    assert parse([open_call], complete=False) == (open_call, [])


def test_tools_rendered_for_a_template_without_tools() -> None:
    """Without native tool support the tools join the system message, past calls are
    assistant text and results are user turns, as Qwen2.5 writes them."""
    history = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city": "Oslo"}')],
        ),
        ChatMessage(role="tool", content="sunny", tool_call_id="c1"),
    ]
    turns, tools = template_inputs(history, [WEATHER], native=False)
    assert tools is None
    assert turns[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in turns[0]["content"]
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert turns[2] == {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"}
    assert turns[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native, offered = template_inputs(history, [WEATHER], native=True)
    assert offered
    assert offered[0]["function"]["name"] == "get_weather"
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert native[3]["tool_call_id"] == "c1"


def test_grammars_follow_the_request() -> None:
    """A forced call is framed by the call tags and names only the allowed function; a
    JSON answer gets its schema's grammar; free text none."""
    base = ChatRequest(request_id="r", model="m", messages=[ChatMessage(role="user", content="x")])
    named = structured.grammar(
        _with(base, tools=[WEATHER, TIME], tool_choice="named", tool_name="get_time")
    )
    assert named.startswith('root ::= "<tool_call>\\n" tool-call "\\n</tool_call>"')
    assert '"\\"get_time\\""' in named
    assert "get_weather" not in named
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    as_json = structured.grammar(
        _with(base, response_format=ResponseFormat(type="json_schema", schema=schema))
    )
    assert '"\\"n\\""' in as_json
    assert structured.grammar(_with(base, tools=[WEATHER])) == ""  # auto: free text


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 100_000_000},  # once: gigabytes and a stalled worker
        {"type": "array", "maxItems": 10**9},
        {"$defs": {"n": {"properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
        {"$ref": "#/nowhere"},
        functools.reduce(lambda inner, _: {"type": "array", "items": inner}, range(40), {}),
    ],
    ids=["huge-min-length", "huge-max-items", "recursive-ref", "dangling-ref", "40-deep"],
)
def test_absurd_schemas_are_refused_at_once(schema: dict) -> None:
    """A schema whose grammar would be huge, recursive, dangling or deeply nested is refused
    (a 400 at the router) before anything is built from it."""
    base = ChatRequest(request_id="r", model="m", messages=[ChatMessage(role="user", content="x")])
    fmt = ResponseFormat(type="json_schema", schema=schema)
    started = time.perf_counter()
    with pytest.raises(structured.UnusableSchema):
        structured.grammar(_with(base, response_format=fmt))
    assert time.perf_counter() - started < 1.0


def _with(request: ChatRequest, **changes: object) -> ChatRequest:
    return msgspec.structs.replace(request, **changes)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"n": 1}', None),
        ('```json\n{"n": 1}\n```', None),
        ('{"n": "one"}', "does not match the schema"),
        ("[1]", "not a JSON object"),
        ("n = 1", "not JSON"),
    ],
)
def test_checked_json(text: str, problem: str | None) -> None:
    """Answers of a backend without grammars are checked against the schema (a Markdown
    fence around them is taken off)."""
    fmt = ResponseFormat(
        type="json_schema", schema={"type": "object", "properties": {"n": {"type": "integer"}}}
    )
    cleaned, found = structured.checked_json(text, fmt)
    assert (found or "").startswith(problem or "")
    assert bool(found) == bool(problem)
    if not problem:
        assert json.loads(cleaned) == {"n": 1}
