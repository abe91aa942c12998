"""Spreading chats over a fleet's boards: least loaded per worker first, ties in turn, a board
that takes nothing is forgotten and the request goes to any worker."""

from collections.abc import AsyncGenerator

import pytest
from edge_router.errors import NoWorker, Unavailable, unavailable
from edge_router.spread import Spread


class Boards:
    """Opens requests on boards, as LlmClient does on the bus; `gone` boards take none."""

    def __init__(self, *gone: str, slow: str | None = None) -> None:
        self.gone = set(gone)
        self.slow = slow
        """A board that does not accept in time (its worker may still take the request)."""
        self.asked: list[str] = []

    async def __call__(self, board: str) -> AsyncGenerator[str, None]:
        self.asked.append(board)
        if board in self.gone:
            raise unavailable("no responders", kind=NoWorker)
        if board == self.slow:
            raise unavailable("did not answer in time")
        return self._events(board)

    @staticmethod
    async def _events(board: str) -> AsyncGenerator[str, None]:
        yield f"token from {board or 'any'}"


async def test_requests_go_to_the_least_loaded_board_per_worker() -> None:
    """While one request runs on b1 (one worker) and none on b2 (two workers), b2 takes the
    next two; ties go in turn."""
    spread, boards = Spread(), Boards()
    spread.update({"m": {"b1": 1, "b2": 2}})
    running = await spread.open("m", boards)  # a tie: the first board
    await anext(running)  # started: it runs until its events end
    for _ in range(2):
        await anext(await spread.open("m", boards))  # b2: 0/2, then 1/2 < 1/1
    assert boards.asked == ["b1", "b2", "b2"]


async def test_a_request_counts_until_its_events_end() -> None:
    """A finished stream frees its board's count: the same board takes the next turn."""
    spread, boards = Spread(), Boards()
    spread.update({"m": {"b1": 1, "b2": 1}})
    for _ in range(4):
        events = await spread.open("m", boards)
        assert [e async for e in events] == [f"token from {boards.asked[-1]}"]
    assert boards.asked == ["b1", "b2", "b1", "b2"]


async def test_a_board_that_takes_nothing_is_forgotten_and_any_worker_is_asked() -> None:
    """b1 left since discovery: its request goes to any worker ("") at once, and b1 is not
    asked again until discovery sees it."""
    spread, boards = Spread(), Boards("b1")
    spread.update({"m": {"b1": 1, "b2": 1}})
    assert [e async for e in await spread.open("m", boards)] == ["token from any"]
    await anext(await spread.open("m", boards))
    await anext(await spread.open("m", boards))
    assert boards.asked == ["b1", "", "b2", "b2"]


async def test_a_board_slow_to_accept_is_not_asked_twice() -> None:
    """A timeout is no proof that nobody has the request: it fails, nobody else is asked."""
    spread, boards = Spread(), Boards(slow="b1")
    spread.update({"m": {"b1": 1, "b2": 1}})
    with pytest.raises(Unavailable):
        await spread.open("m", boards)
    assert boards.asked == ["b1"]
    await anext(await spread.open("m", boards))  # b1's count was given back: a tie, b2's turn
    assert boards.asked == ["b1", "b2"]


async def test_no_board_known_asks_any_worker() -> None:
    """Workers that name no board (or none seen yet): the plain subject."""
    spread, boards = Spread(), Boards()
    await anext(await spread.open("m", boards))
    assert boards.asked == [""]
