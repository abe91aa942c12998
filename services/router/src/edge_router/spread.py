"""Spreading local chats over the boards of a fleet.

Boards join one bus as leaf nodes of a hub, and NATS hands a queue-group request to a
subscriber on the publisher's own server before one behind a leaf link: plain
`llm.chat.<model>` requests would all go to the router's own board while the others idle.
So the router names a board (`llm.chat.<model>.<board>`, the queue group of that board's
workers): the one with the fewest of this router's requests running per worker, the least
recently picked among equals. Which boards serve a model, with how many workers, is what
discovery (micro STATS) last saw. A board with nobody to take a request (it left since) is
forgotten until discovery sees it again, and the request goes to any worker of its model.
"""

import itertools
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

from edge_router.errors import NoWorker

E = TypeVar("E")
Events = AsyncGenerator[E, None]
Opener = Callable[[str], Awaitable[Events[E]]]
"""Submits a request to a board's workers ("": to any worker) and returns its events."""


class Spread:
    def __init__(self) -> None:
        self._boards: dict[str, dict[str, int]] = {}
        """Model -> board -> workers serving it there."""
        self._running: Counter[str] = Counter()
        self._picked: dict[str, int] = {}
        self._ticks = itertools.count(1)

    def update(self, boards: dict[str, dict[str, int]]) -> None:
        """What a discovery round found: model -> board -> workers."""
        self._boards = boards

    def forget(self, board: str) -> None:
        self._boards = {
            model: {b: n for b, n in found.items() if b != board}
            for model, found in self._boards.items()
        }

    def pick(self, model: str) -> str:
        """The board to send a request for `model` to; "" when none is known."""
        found = self._boards.get(model)
        if not found:
            return ""
        board = min(found, key=lambda b: (self._running[b] / found[b], self._picked.get(b, 0)))
        self._picked[board] = next(self._ticks)
        return board

    async def open(self, model: str, opener: Opener[E]) -> Events[E]:
        """A request for `model` opened by `opener` on the board picked, counted as running
        there until its events end (the caller must start them); on any worker when no board
        is known or the one picked did not take it."""
        board = self.pick(model)
        if not board:
            return await opener("")
        self._running[board] += 1
        try:
            events = await opener(board)
        except NoWorker:  # not a timeout: a worker that was slow to accept may have it
            self._running[board] -= 1
            self.forget(board)
            return await opener("")
        except BaseException:
            self._running[board] -= 1
            raise
        return self._counted(board, events)

    async def _counted(self, board: str, events: Events[E]) -> Events[E]:
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        finally:
            self._running[board] -= 1
