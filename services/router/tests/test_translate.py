"""Checking OpenAI chat requests, and translating them to the llm wire protocol."""

import msgspec
import pytest
from edge_router import protocol as p
from edge_router.checks import check
from edge_router.errors import InvalidRequest
from edge_router.settings import InputLimits
from edge_router.translate import to_wire

decode_request = msgspec.json.Decoder(p.ChatCompletionRequest).decode


def req(**body: object) -> p.ChatCompletionRequest:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return decode_request(msgspec.json.encode(base | body))


def test_message_forms_flatten_to_text() -> None:
    """String and text-part contents, developer and system roles all reach the model as text."""
    out = to_wire(
        req(
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
            ]
        ),
        "m",
        "rid",
    )
    assert [(m.role, m.content) for m in out.messages] == [
        ("system", "be brief"),
        ("system", "and kind"),
        ("user", "a\nb"),
        ("assistant", ""),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"stop": "END"}, {"stop": ["END"]}),
        ({"stop": ["a", "b"]}, {"stop": ["a", "b"]}),
        ({"max_tokens": 7}, {"max_tokens": 7}),
        ({"max_completion_tokens": 9}, {"max_tokens": 9}),
        ({"max_tokens": 5, "max_completion_tokens": 6}, {"max_tokens": 6}),  # the newer wins
        ({"temperature": 0, "top_p": 0.5, "seed": 3}, {"temperature": 0, "top_p": 0.5, "seed": 3}),
        ({}, {"stop": [], "max_tokens": None, "temperature": None, "seed": None}),
    ],
)
def test_sampling_fields_carry_over(body: dict, expected: dict) -> None:
    """OpenAI's sampling fields land in the wire request with the same meaning."""
    out = to_wire(req(**body), "m", "rid")
    assert {k: getattr(out, k) for k in expected} == expected
    assert out.request_id == "rid"


def test_n_above_one_is_refused_by_name() -> None:
    """n=2 is a 400 naming `n`, whatever the route (what a model can do is the policy's)."""
    with pytest.raises(InvalidRequest) as err:
        check(req(n=2), InputLimits())
    assert err.value.param == "n"


def test_configured_limits_hold_on_the_local_path() -> None:
    """Limits raised above the defaults are the ones that count (to_wire used to check
    again against the defaults, and refused what the configuration allowed)."""
    request = req(max_tokens=40_000)
    check(request, InputLimits(max_tokens=65_536))
    assert to_wire(request, "m", "rid").max_tokens == 40_000
