"""Subjects made from model ids: one valid token each, and never the same for two ids."""

import re

from edge_common.protocol.llm import chat_subject

IDS = ["qwen2.5-1.5b", "a.b", "a_2eb", "a_b", "org/model:q4", "café", "*", ">", "x y"]


def test_chat_subjects_are_one_safe_token_per_model() -> None:
    subjects = [chat_subject(model) for model in IDS]
    assert all(re.fullmatch(r"llm\.chat\.[A-Za-z0-9_-]+", s) for s in subjects), subjects
    assert len(set(subjects)) == len(IDS)
    assert chat_subject("smollm2-135m-instruct") == "llm.chat.smollm2-135m-instruct"


def test_a_board_subject_adds_one_safe_token_per_board() -> None:
    """A board's name becomes one token after the model's, escaped like a model id."""
    subjects = [chat_subject("m", board) for board in IDS]
    assert all(re.fullmatch(r"llm\.chat\.m\.[A-Za-z0-9_-]+", s) for s in subjects), subjects
    assert len(set(subjects)) == len(IDS)
    assert chat_subject("m", "rock-4d-01") == "llm.chat.m.rock-4d-01"
