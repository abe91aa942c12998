"""One chat generation as a stream of wire events, whatever the backend.

Applies what OpenAI defines above the model: stop strings (never emitted, even when split
across tokens), the completion budget (`max_tokens`, bounded by the context window), and
the finish reason. With tools, the text goes through the tool-call parser
(edge_llm.tool_calls); a backend with grammars gets the one the request implies
(edge_llm.structured), one without has a constrained answer checked, generated again once
if it fails, else the request fails with `invalid_output` (the router may then go to the
cloud). Exactly one Done ends a successful stream.
"""

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import structlog
from edge_common.protocol.llm import ChatRequest, Delta, Done
from edge_common.worker import JobFailed, Outcome

from edge_llm import structured
from edge_llm.backends import Backend, RuntimeUsage, Sampling
from edge_llm.tool_calls import ToolCallParser

log = structlog.get_logger(__name__)
CHECKED_ATTEMPTS = 2
"""A checked answer (no grammar) that fails its check is generated once more, then fails."""


class StopMatcher:
    """Holds back text that could still become a stop string, in work linear in the text.

    Each stop string has a Knuth-Morris-Pratt automaton whose state is the length of the
    longest suffix of the text so far that is a prefix of that stop. Feeding a character
    costs amortised O(1) per stop (`steps` counts the transitions), whatever the stops'
    lengths, and at most the longest state's worth of text (under the longest stop's length)
    is ever held back.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._failure = [_failure_function(s) for s in self._stops]
        self._states = [0] * len(self._stops)
        self._held = ""
        self.steps = 0
        """Automaton transitions so far: at most 2 per character fed per stop."""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached."""
        base = len(self._held)
        self._held += text
        first_hit: int | None = None  # start (in _held) of the earliest stop completed
        for k, (stop, failure) in enumerate(zip(self._stops, self._failure, strict=True)):
            state = self._states[k]
            for i, char in enumerate(text):
                while state and stop[state] != char:
                    state = failure[state - 1]
                    self.steps += 1
                self.steps += 1
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    start = base + i + 1 - state
                    first_hit = start if first_hit is None else min(first_hit, start)
                    break
            self._states[k] = state
        if first_hit is not None:
            out, self._held = self._held[:first_hit], ""
            return out, True
        keep = max(self._states, default=0)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


def _failure_function(stop: str) -> list[int]:
    """KMP's table: for each prefix of `stop`, the length of its longest proper border."""
    failure = [0] * len(stop)
    border = 0
    for i in range(1, len(stop)):
        while border and stop[i] != stop[border]:
            border = failure[border - 1]
        if stop[i] == stop[border]:
            border += 1
        failure[i] = border
    return failure


def completion_budget(request: ChatRequest, prompt_tokens: int, context_length: int) -> int:
    room = context_length - prompt_tokens
    return min(request.max_tokens, room) if request.max_tokens else room


class Generation:
    """One request's generation; `completion_tokens` grows live as tokens are produced."""

    final = Done

    def __init__(
        self, backend: Backend, request: ChatRequest, prompt: list[int], grammar: str = ""
    ) -> None:
        """A job of edge_common.worker (see its Job); `grammar`: see structured.grammar,
        for a backend with grammars."""
        self._backend = backend
        self._request = request
        self._prompt = prompt
        self.request_id, self.stream_to = request.request_id, request.stream_to
        self.model = request.model
        self.prompt_length = len(prompt)
        self.completion_tokens = 0
        self.started_at = self.progressed_at = time.monotonic()
        """When it started generating, and last produced something (monotonic)."""
        self.outcome: Outcome | None = None
        self.stopped_by: str | None = None
        self._tools = structured.call_tools(request)
        self._grammar = grammar
        # Without a grammar, an answer the request constrains is checked before it is sent.
        self._checked = not self._grammar and (
            request.response_format is not None
            or (bool(self._tools) and request.tool_choice in ("required", "named"))
        )

    def summary(self) -> dict[str, object]:
        return {"completion_tokens": self.completion_tokens}

    def last_progress(self) -> float:
        """When the backend last produced a token or showed it was computing (monotonic):
        what the watchdog reads."""
        return max(self.progressed_at, self._backend.computed_at)

    async def events(self) -> AsyncIterator[Delta | Done]:
        self.started_at = self.progressed_at = time.monotonic()
        if not self._checked:
            async with aclosing(self._attempt(self._request.seed)) as events:
                async for event in events:
                    yield event
            return
        problem = ""
        for attempt in range(CHECKED_ATTEMPTS):
            seed = None if self._request.seed is None else self._request.seed + attempt
            answer = [event async for event in self._attempt(seed)]
            answer, problem = self._check(answer)
            if not problem:
                for event in answer:
                    yield event
                return
            log.warning(
                "llm.output_invalid", model=self.model, attempt=attempt + 1, problem=problem
            )
        raise JobFailed(
            "invalid_output",
            f"The model's answer did not follow the request's format in {CHECKED_ATTEMPTS} "
            f"attempts: {problem}.",
        )

    def _check(self, answer: list[Delta | Done]) -> tuple[list[Delta | Done], str]:
        """The answer to send (a JSON answer without a Markdown fence) and what is wrong
        with it ("" if nothing)."""
        done = answer[-1]
        assert isinstance(done, Done)
        if self._request.tool_choice in ("required", "named") and self._tools:
            made = done.finish_reason == "tool_calls"
            return answer, "" if made else "no call of the tools it had to call"
        fmt = self._request.response_format
        assert fmt is not None
        text = "".join(e.text for e in answer if isinstance(e, Delta))
        text, problem = structured.checked_json(text, fmt)
        return [Delta(text=text), done], problem or ""

    async def _attempt(self, seed: int | None) -> AsyncIterator[Delta | Done]:
        request, spec = self._request, self._backend.spec
        budget = completion_budget(request, len(self._prompt), self._backend.card.context_length)
        sampling = Sampling(
            temperature=spec.temperature if request.temperature is None else request.temperature,
            top_p=spec.top_p if request.top_p is None else request.top_p,
            seed=seed,
            max_new_tokens=budget,
            grammar=self._grammar,
            tools=self._tools,
            system=next((m.content for m in request.messages if m.role == "system"), ""),
        )
        matcher = StopMatcher(request.stop)
        calls = ToolCallParser(self._tools) if self._tools else None
        stopped = False
        counted: RuntimeUsage | None = None
        generated = 0
        async with aclosing(self._backend.stream(self._prompt, sampling)) as pieces:
            async for piece in pieces:
                self.progressed_at = time.monotonic()
                if isinstance(piece, RuntimeUsage):
                    counted = piece
                    continue
                self.completion_tokens += 1
                generated += 1
                text, stopped = matcher.feed(piece)
                if delta := _delta(text, calls):
                    yield delta
                if stopped:
                    break
        tail = "" if stopped else matcher.flush()
        if counted is not None:  # the runtime's own figures win
            self.completion_tokens += counted.completion_tokens - generated
            generated = counted.completion_tokens
        cut = not stopped and generated >= budget
        if calls is None:
            if tail:
                yield Delta(text=tail)
        else:
            text, pieces = calls.feed(tail)
            rest, more = calls.flush(complete=not cut)
            if text + rest or pieces + more:
                yield Delta(text=text + rest, tool_calls=pieces + more)
        yield Done(
            finish_reason="tool_calls" if calls and calls.calls else "length" if cut else "stop",
            prompt_tokens=counted.prompt_tokens if counted else len(self._prompt),
            completion_tokens=generated,
        )


def _delta(text: str, calls: ToolCallParser | None) -> Delta | None:
    """The event for newly generated text: content and, with tools, completed calls."""
    if calls is None:
        return Delta(text=text) if text else None
    content, pieces = calls.feed(text)
    return Delta(text=content, tool_calls=pieces) if content or pieces else None
