"""NATS passwords: what nats-server can read from its environment as a string."""

import pytest
from edge_common.stack import NATS_PASSWORD, StartError, nats_passwords


def test_generated_passwords_are_words_nats_reads_as_strings() -> None:
    """token_urlsafe alone may start like a number ("-F...", "9-a..."): nats-server then
    refuses to start (this made the suite flaky). Ours always start with a letter."""
    made = [p for _ in range(500) for p in nats_passwords({}).values()]
    assert all(NATS_PASSWORD.fullmatch(p) for p in made)
    assert len(set(made)) == len(made)


def test_given_passwords_are_kept_or_refused_by_name() -> None:
    given = {"EDGE_LLM_NATS_PASSWORD": "Worker-password_0001"}
    assert nats_passwords(given)["EDGE_LLM_NATS_PASSWORD"] == "Worker-password_0001"
    with pytest.raises(StartError, match="EDGE_OPS_NATS_PASSWORD"):
        nats_passwords({"EDGE_OPS_NATS_PASSWORD": "12k-is-a-number-here"})
