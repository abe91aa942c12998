"""What the router knows of the local side: the models running, and how busy they are.

The catalog is refreshed from the llm services' micro INFO in the background (and at once
when a request names a model it does not know); the load is the number of local requests
in flight and an EWMA of how long one takes, giving an estimated wait for a new one.
"""

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from edge_common.wire import ModelCard

from edge_router.llm_client import LlmClient

log = structlog.get_logger(__name__)


class LocalCatalog:
    def __init__(self, llm: LlmClient, window_s: float) -> None:
        self._llm = llm
        self._window_s = window_s
        self.cards: dict[str, ModelCard] = {}

    async def refresh(self) -> None:
        self.cards = {card.id: card for card in await self._llm.models(self._window_s)}

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the bus may be reconnecting: keep the last view
                log.exception("router.catalog_refresh_failed")
            await asyncio.sleep(interval_s)

    def windows(self) -> dict[str, int]:
        return {card.id: card.context_length for card in self.cards.values()}


class LocalLoad:
    def __init__(self, initial_s: float = 2.0, alpha: float = 0.2) -> None:
        self.inflight = 0
        self.service_s = initial_s
        self._alpha = alpha

    @contextmanager
    def track(self) -> Iterator[None]:
        self.inflight += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.inflight -= 1
            elapsed = time.monotonic() - started
            self.service_s += self._alpha * (elapsed - self.service_s)

    def wait_s(self) -> float:
        """Expected wait of a new request behind those in flight (one generation at a time)."""
        return self.inflight * self.service_s
