"""Framing llm wire events as OpenAI chat completion chunks."""

from collections.abc import AsyncIterator

import msgspec
import pytest
from edge_common.protocol import llm as llm_wire
from edge_router.answers import chunks


async def events(
    *items: llm_wire.Delta | llm_wire.Done,
) -> AsyncIterator[llm_wire.Delta | llm_wire.Done]:
    for item in items:
        yield item


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chunks_follow_openai_sequence(include_usage: bool) -> None:
    """Role chunk first, one chunk per delta, a finish chunk, then the usage chunk if asked."""
    done = llm_wire.Done(finish_reason="length", prompt_tokens=4, completion_tokens=2)
    got = [
        c
        async for c in chunks(
            events(llm_wire.Delta(text="He"), llm_wire.Delta(text="y"), done),
            "id1",
            "m",
            include_usage,
        )
    ]
    encoded = [msgspec.to_builtins(c) for c in got]
    assert [c["choices"][0]["delta"] for c in encoded[:4]] == [
        {"role": "assistant", "content": ""},
        {"content": "He"},
        {"content": "y"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in encoded[:4]] == [None, None, None, "length"]
    assert {c["id"] for c in encoded} == {"id1"}
    assert {c["object"] for c in encoded} == {"chat.completion.chunk"}
    if include_usage:
        assert encoded[4]["choices"] == []
        assert encoded[4]["usage"] == {
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "total_tokens": 6,
        }
    assert len(encoded) == 4 + include_usage
