"""One chat generation as a stream of wire events, whatever the backend.

Applies what OpenAI defines above the model: stop strings (never emitted, even when split
across tokens), the completion budget (`max_tokens`, bounded by the context window), and
the finish reason. Exactly one Done ends a successful stream.
"""

from collections.abc import AsyncIterator
from contextlib import aclosing

from edge_common.wire import ChatRequest, Delta, Done

from edge_llm.backends import Backend, RuntimeUsage, Sampling


class StopMatcher:
    """Holds back text that could still become a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string was reached."""
        self._held += text
        hits = [i for s in self._stops if (i := self._held.find(s)) >= 0]
        if hits:
            out, self._held = self._held[: min(hits)], ""
            return out, True
        keep = max(
            (n for s in self._stops for n in range(1, len(s)) if self._held.endswith(s[:n])),
            default=0,
        )
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


def completion_budget(request: ChatRequest, prompt_tokens: int, context_length: int) -> int:
    room = context_length - prompt_tokens
    return min(request.max_tokens, room) if request.max_tokens else room


class Generation:
    """One request's generation; `completion_tokens` grows live as tokens are produced."""

    def __init__(self, backend: Backend, request: ChatRequest, prompt: list[int]) -> None:
        self._backend = backend
        self._request = request
        self._prompt = prompt
        self.model = request.model
        self.completion_tokens = 0
        self.outcome: str | None = None
        """How it ended (completed, cancelled, failed), set by whoever ran it."""

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
        async with aclosing(self._backend.stream(self._prompt, sampling)) as pieces:
            async for piece in pieces:
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
