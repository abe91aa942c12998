"""Tool calls in a model's own syntax: the prompt that offers the tools, and a strict parser
of the calls in the generated text.

The syntax is Hermes' (Qwen2.5, Qwen3, SmolLM3, Hermes, and what we teach models whose
template knows no tools): a call is a JSON object `{"name": ..., "arguments": {...}}` (or a
list of them, as SmolLM2 was tuned to write) between `<tool_call>` and `</tool_call>`. A
template that writes `<tool_call>` itself gets the tools and the OpenAI-shaped messages;
any other gets the tools in its system message and past calls and results as text, the way
Qwen2.5's template writes them.

Strict: a call names a declared function, its arguments are a JSON object, its block is
closed (or the generation ended right after complete JSON); anything else, and anything
inside a `<think>` block, is text.
"""

import json
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
from edge_common.protocol.llm import ChatMessage, Tool, ToolCallPiece

OPEN, CLOSE = "<tool_call>", "</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ARGUMENT_PIECE_CHARS = 16
"""Arguments stream in pieces of this many characters, as OpenAI streams them."""

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def openai_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """The tools as OpenAI (and chat templates) write them."""
    return [{"type": "function", "function": msgspec.to_builtins(t)} for t in tools]


def _call_text(call: dict[str, Any]) -> str:
    return f"{OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{CLOSE}"


def _arguments(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text  # what the client sent back, as it is


def template_inputs(
    messages: list[ChatMessage], tools: list[Tool], native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for a chat template: `native` if it writes tool calls itself."""
    if native:
        out = []
        for m in messages:
            entry: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            if m.role == "tool":
                entry["tool_call_id"] = m.tool_call_id
            out.append(entry)
        return out, openai_tools(tools) or None
    out = []
    for m in messages:
        if m.role == "tool":
            content = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1].get("tool_results"):  # consecutive results: one user turn
                out[-1]["content"] += "\n" + content
                continue
            out.append({"role": "user", "content": content, "tool_results": True})
            continue
        calls = [
            _call_text({"name": c.name, "arguments": _arguments(c.arguments)}) for c in m.tool_calls
        ]
        out.append({"role": m.role, "content": "\n".join(filter(None, [m.content, *calls]))})
    for entry in out:
        entry.pop("tool_results", None)
    if tools:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in openai_tools(tools))
        offer = TOOLS_PROMPT.format(tools=listed)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{offer}"
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out, None


def is_native(template: str) -> bool:
    """Whether a chat template renders tools and writes calls in our syntax itself."""
    return OPEN in template and "tools" in template


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_block(body: str, names: set[str]) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call in a block's body, or None if it is no call."""
    try:
        found = json.loads(body)
    except ValueError:
        return None
    calls = found if isinstance(found, list) and found else [found]
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            return None
        name, arguments = call["name"], call["arguments"]
        if name not in names or not isinstance(arguments, dict):
            return None
        parsed.append((name, json.dumps(arguments, ensure_ascii=False)))
    return parsed


def _partial_tag(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could still become one of `tags`."""
    for size in range(min(len(text), max(map(len, tags)) - 1), 0, -1):
        if any(tag.startswith(text[-size:]) for tag in tags):
            return size
    return 0


class ToolCallParser:
    """Splits generated text, fed piece by piece, into content and tool calls.

    Content streams at once except what could still be the start of a tag (and whitespace
    that may only separate calls); a call block is held whole until it closes, then either
    becomes tool-call pieces or, if it is no valid call, text.
    """

    def __init__(self, tools: list[Tool]) -> None:
        self._names = {t.name for t in tools}
        self._held = ""  # text not yet given out
        self._block: str | None = None  # inside <tool_call>: its body so far
        self._thinking = False
        self._spaces = ""  # whitespace held: dropped if only calls follow
        self.calls = 0

    def feed(self, text: str) -> tuple[str, list[ToolCallPiece]]:
        """Content safe to give out now, and the pieces of the calls completed."""
        self._held += text
        content: list[str] = []
        pieces: list[ToolCallPiece] = []
        while True:
            if self._block is not None:
                end = self._held.find(CLOSE)
                if end < 0:
                    return "".join(content), pieces
                body, self._held = self._held[:end], self._held[end + len(CLOSE) :]
                self._block = None
                got = self._complete(body)
                if got is None:
                    content.append(self._spaces + OPEN + body + CLOSE)
                    self._spaces = ""
                else:
                    pieces += got
                continue
            tags = (THINK_CLOSE,) if self._thinking else (OPEN, THINK_OPEN)
            hits = [(i, t) for t in tags if (i := self._held.find(t)) >= 0]
            if not hits:
                keep = _partial_tag(self._held, tags)
                cut = len(self._held) - keep
                out, self._held = self._held[:cut], self._held[cut:]
                content.append(self._text(out))
                return "".join(content), pieces
            at, tag = min(hits)
            before, self._held = self._held[:at], self._held[at + len(tag) :]
            if tag == OPEN:
                content.append(self._text(before))
                self._block = ""
            else:
                content.append(self._text(before + tag))
                self._thinking = tag == THINK_OPEN

    def flush(self, complete: bool) -> tuple[str, list[ToolCallPiece]]:
        """What is left when the generation ended (`complete`: by the model, not the budget)."""
        held, self._held = self._held, ""
        if self._block is not None:
            self._block = None
            if complete and (got := self._complete(held)) is not None:
                return "", got
            return self._spaces + OPEN + held, []
        if not self.calls:
            out, self._spaces = self._spaces + held, ""
            return out, []
        return self._text(held) if held.strip() else "", []

    def _text(self, text: str) -> str:
        """Content, but trailing whitespace (which may only lead to a call) held back."""
        if self._thinking:
            out, self._spaces = self._spaces + text, ""
            return out
        kept = text.rstrip()
        if not kept:
            self._spaces += text
            return ""
        out, self._spaces = self._spaces + kept, text[len(kept) :]
        return out

    def _complete(self, body: str) -> list[ToolCallPiece] | None:
        parsed = parse_block(body.strip(), self._names)
        if parsed is None:
            return None
        pieces = []
        for name, arguments in parsed:
            pieces += list(call_pieces(self.calls, name, arguments))
            self.calls += 1
        self._spaces = ""
        return pieces


def call_pieces(index: int, name: str, arguments: str) -> Iterator[ToolCallPiece]:
    """One call as OpenAI streams it: id and name first, then the arguments in pieces."""
    yield ToolCallPiece(index=index, id=new_call_id(), name=name)
    for start in range(0, len(arguments), ARGUMENT_PIECE_CHARS):
        yield ToolCallPiece(index=index, arguments=arguments[start : start + ARGUMENT_PIECE_CHARS])
