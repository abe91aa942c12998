"""Structured output: grammars that make a model's answer valid by construction (llama.cpp),
checks of an answer where the runtime has no grammars (RKLLM), and the instruction that
tells the model what is wanted either way.

Grammars are GBNF, from JSON Schema by llama-cpp-python's converter (`json_schema_to_gbnf`,
the port of llama.cpp's json_schema_to_grammar): `json_object` is any JSON object,
`json_schema` its schema, and a required or named tool call the call syntax of
edge_llm.tool_calls around an object that names one of the functions with arguments of its
schema. llama-cpp-python (the `cpu` extra) is imported only when a grammar is made: an
RKLLM-only image has none (its answers are checked instead).
"""

import functools
import json
import re
from typing import TYPE_CHECKING, Any

import jsonschema
from edge_common.protocol.llm import ChatMessage, ChatRequest, ResponseFormat, Tool

from edge_llm.tool_calls import CLOSE, OPEN

if TYPE_CHECKING:
    from llama_cpp import LlamaGrammar

ANY_OBJECT: dict[str, Any] = {"type": "object"}
_ROOT = re.compile(r"^root ::=", re.MULTILINE)
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)


def answer_schema(fmt: ResponseFormat) -> dict[str, Any]:
    return fmt.schema if fmt.type == "json_schema" and fmt.schema else ANY_OBJECT


class UnusableSchema(ValueError):
    """A schema (of response_format or a tool) no grammar can be made of."""


MAX_REPEAT = 4096
"""Largest length or count bound a schema may set: llama.cpp expands a bound into that many
grammar rules (minLength 10**8 took gigabytes and stalled the worker)."""
MAX_DEPTH = 32
MAX_GRAMMAR_CHARS = 200_000
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def _check_bounds(node: object, depth: int = 0) -> None:
    """UnusableSchema if `node` nests deeper than MAX_DEPTH or bounds beyond MAX_REPEAT."""
    if depth > MAX_DEPTH:
        raise UnusableSchema(f"the schema nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        for key in _BOUNDS:
            if isinstance(bound := node.get(key), int) and bound > MAX_REPEAT:
                raise UnusableSchema(f"{key} {bound} is above the {MAX_REPEAT} this server takes")
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return
    for child in children:
        _check_bounds(child, depth + 1)


def _gbnf(schema: dict[str, Any], prop_order: list[str] | None = None) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _check_bounds(schema)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema), prop_order=prop_order)
    except Exception as exc:  # user input into a third-party converter
        # it asserts what it does not support and trips on much else (recursive $refs...)
        raise UnusableSchema(str(exc) or type(exc).__name__) from None
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise UnusableSchema(f"its grammar is larger than {MAX_GRAMMAR_CHARS} characters")
    try:
        parsed(gbnf)
    except Exception as exc:  # llama.cpp refuses a grammar it cannot use
        raise UnusableSchema(str(exc) or type(exc).__name__) from None
    return gbnf


@functools.lru_cache(maxsize=16)
def parsed(gbnf: str) -> "LlamaGrammar":
    """Parsed once per distinct grammar: clients repeat the same schemas and tools."""
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(gbnf, verbose=False)


def call_tools(request: ChatRequest) -> list[Tool]:
    """The tools the model is offered: none under tool_choice `none`, one when named."""
    if request.tool_choice == "none":
        return []
    if request.tool_choice == "named":
        return [t for t in request.tools if t.name == request.tool_name]
    return request.tools


def grammar(request: ChatRequest) -> str:
    """The GBNF the answer must follow, or "" when it is free text (UnusableSchema)."""
    if request.tools and request.tool_choice in ("required", "named"):
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": t.parameters or ANY_OBJECT,
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in call_tools(request)
        ]
        body = _ROOT.sub("tool-call ::=", _gbnf({"anyOf": calls}, ["name", "arguments"]))
        opening, closing = json.dumps(OPEN + "\n"), json.dumps("\n" + CLOSE)
        return f"root ::= {opening} tool-call {closing}\n{body}"
    if request.response_format is not None:
        return _gbnf(answer_schema(request.response_format))
    return ""


def instruction(fmt: ResponseFormat) -> str:
    """What the system message says of the wanted answer (grammar or not, it helps)."""
    if fmt.type == "json_schema" and fmt.schema:
        return (
            "Answer with a single JSON object that validates against this JSON Schema, "
            f"and nothing else:\n{json.dumps(fmt.schema, ensure_ascii=False)}"
        )
    return "Answer with a single JSON object, and nothing else."


def with_instruction(messages: list[ChatMessage], fmt: ResponseFormat | None) -> list[ChatMessage]:
    """The conversation with the answer's format named in its system message."""
    if fmt is None:
        return messages
    said = instruction(fmt)
    if messages and messages[0].role == "system":
        first = messages[0]
        return [ChatMessage(role="system", content=f"{first.content}\n\n{said}"), *messages[1:]]
    return [ChatMessage(role="system", content=said), *messages]


def checked_json(text: str, fmt: ResponseFormat) -> tuple[str, str | None]:
    """(the answer without a Markdown fence around it, what is wrong with it or None)."""
    text = text.strip()
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except ValueError as exc:
        return text, f"not JSON ({exc})"
    if not isinstance(value, dict):
        return text, "not a JSON object"
    try:
        jsonschema.validate(value, answer_schema(fmt))
    except jsonschema.ValidationError as exc:
        return text, f"does not match the schema ({exc.message})"
    return text, None
