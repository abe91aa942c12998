"""One chat generation as a stream of wire events, whatever the backend.

Applies what OpenAI defines above the model: stop strings (never emitted, even when split
across tokens), the completion budget (`max_tokens`, bounded by the context window), and
the finish reason. Exactly one Done ends a successful stream.
"""

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from edge_common.protocol.llm import ChatRequest, Delta, Done
from edge_common.worker import Outcome

from edge_llm.backends import Backend, RuntimeUsage, Sampling


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

    def __init__(self, backend: Backend, request: ChatRequest, prompt: list[int]) -> None:
        """A job of edge_common.worker (see its Job)."""
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

    def summary(self) -> dict[str, object]:
        return {"completion_tokens": self.completion_tokens}

    def last_progress(self) -> float:
        """When the backend last produced a token or showed it was computing (monotonic):
        what the watchdog reads."""
        return max(self.progressed_at, self._backend.computed_at)

    async def events(self) -> AsyncIterator[Delta | Done]:
        request, spec = self._request, self._backend.spec
        budget = completion_budget(request, len(self._prompt), self._backend.card.context_length)
        sampling = Sampling(
            temperature=spec.temperature if request.temperature is None else request.temperature,
            top_p=spec.top_p if request.top_p is None else request.top_p,
            seed=request.seed,
            max_new_tokens=budget,
        )
        matcher = StopMatcher(request.stop)
        stopped = False
        counted: RuntimeUsage | None = None
        self.started_at = self.progressed_at = time.monotonic()
        async with aclosing(self._backend.stream(self._prompt, sampling)) as pieces:
            async for piece in pieces:
                self.progressed_at = time.monotonic()
                if isinstance(piece, RuntimeUsage):
                    counted = piece
                    continue
                self.completion_tokens += 1
                text, stopped = matcher.feed(piece)
                if text:
                    yield Delta(text=text)
                if stopped:
                    break
        if not stopped and (tail := matcher.flush()):
            yield Delta(text=tail)
        if counted is not None:  # the runtime's own figures win
            self.completion_tokens = counted.completion_tokens
        yield Done(
            finish_reason="length" if not stopped and self.completion_tokens >= budget else "stop",
            prompt_tokens=counted.prompt_tokens if counted else len(self._prompt),
            completion_tokens=self.completion_tokens,
        )
