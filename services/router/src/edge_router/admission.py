"""Admission to the local llm: a bounded priority queue in front of the workers.

At most `concurrency()` requests run at once (one per llm worker: each generates one at a
time); up to `depth` more wait, higher priority first, then first come first served. A
request that would find the queue full, or whose estimated wait exceeds its deadline, is
refused at once with 429 and a Retry-After from the estimate. A waiter that goes away
(client disconnected) leaves the queue and never runs. The estimate comes from an EWMA
of how long one request holds its place.
"""

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec

from edge_router.errors import RateLimited


class QueueStatus(msgspec.Struct, frozen=True, kw_only=True):
    depth: int
    waiting: int
    running: int
    concurrency: int
    service_s: float
    """EWMA of how long one request runs."""
    estimated_wait_s: float
    """What a request arriving now would wait."""
    rejected: int


class Admission:
    def __init__(
        self,
        *,
        depth: int,
        concurrency: Callable[[], int],
        initial_service_s: float = 2.0,
        alpha: float = 0.2,
    ) -> None:
        self._depth = depth
        self._concurrency = concurrency
        self.service_s = initial_service_s
        self._alpha = alpha
        self.running = 0
        self.rejected = 0
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._heap if not f.done())

    @property
    def full(self) -> bool:
        return self.waiting >= self._depth

    def estimate_s(self, ahead: int | None = None) -> float:
        """Wait of a request with `ahead` requests queued before it (default: all of them)."""
        ahead = self.waiting if ahead is None else ahead
        slots = max(1, self._concurrency())
        if self.running < slots and ahead == 0:
            return 0.0
        return (ahead // slots + 1) * self.service_s

    def status(self) -> QueueStatus:
        return QueueStatus(
            depth=self._depth,
            waiting=self.waiting,
            running=self.running,
            concurrency=max(1, self._concurrency()),
            service_s=round(self.service_s, 3),
            estimated_wait_s=round(self.estimate_s(), 3),
            rejected=self.rejected,
        )

    @asynccontextmanager
    async def slot(
        self, *, priority: int = 0, deadline_s: float | None = None
    ) -> AsyncIterator[None]:
        """Hold a place to run for the block; waits in line, or raises RateLimited at once."""
        if self.running < max(1, self._concurrency()) and not self.waiting:
            self.running += 1
        else:
            await self._wait(priority, deadline_s)
        started = time.monotonic()
        try:
            yield
        finally:
            self.service_s += self._alpha * (time.monotonic() - started - self.service_s)
            self.running -= 1
            self._grant()

    async def _wait(self, priority: int, deadline_s: float | None) -> None:
        ahead = sum(1 for p, _, f in self._heap if p <= -priority and not f.done())
        estimate = self.estimate_s(ahead)
        if self.full:
            self.rejected += 1
            raise RateLimited(
                f"The local model's queue is full ({self._depth} waiting); "
                f"retry in about {math.ceil(estimate)} s.",
                code="queue_full",
                retry_after=estimate,
            )
        if deadline_s is not None and estimate > deadline_s:
            self.rejected += 1
            raise RateLimited(
                f"The estimated wait of {estimate:.1f} s exceeds "
                f"your deadline of {deadline_s:g} s.",
                code="queue_wait_exceeds_deadline",
                retry_after=estimate,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (-priority, next(self._seq), turn))
        try:
            await turn  # _grant counted us as running before waking us
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.running -= 1  # granted as we were cancelled: pass the place on
                self._grant()
            else:
                turn.cancel()
            raise

    def _grant(self) -> None:
        while self._heap and self.running < max(1, self._concurrency()):
            *_, turn = heapq.heappop(self._heap)
            if not turn.done():
                self.running += 1
                turn.set_result(None)
