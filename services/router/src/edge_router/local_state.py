"""What the router knows of the local side: the models running and how many workers.

Refreshed from the llm services' micro INFO in the background, and at once when a request
names a model it does not know.
"""

import asyncio

import structlog
from edge_common.wire import ModelCard

from edge_router.llm_client import LlmClient

log = structlog.get_logger(__name__)


class LocalCatalog:
    def __init__(self, llm: LlmClient, window_s: float) -> None:
        self._llm = llm
        self._window_s = window_s
        self.cards: dict[str, ModelCard] = {}
        self.instances = 0

    async def refresh(self) -> None:
        cards, self.instances = await self._llm.models(self._window_s)
        self.cards = {card.id: card for card in cards}

    def mark_down(self) -> None:
        """Nobody answered a request: local is down until discovery says otherwise."""
        self.cards, self.instances = {}, 0

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the bus may be reconnecting: keep the last view
                log.exception("router.catalog_refresh_failed")
            await asyncio.sleep(interval_s)

    def windows(self) -> dict[str, int]:
        return {card.id: card.context_length for card in self.cards.values()}
