"""What the router knows of the local side: the models served, which are loaded, what a
switch costs, and how many workers there are.

Refreshed from the llm services' micro STATS in the background, and at once when a request
names a model it does not know (requests that miss together share one round: a flood of
unknown names costs one round at a time, not one each).
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
        self._miss_round: asyncio.Future[None] | None = None
        self.cards: dict[str, ModelCard] = {}
        self.instances = 0
        self.resident: set[str] = set()
        self.switch_s = 0.0

    async def refresh(self) -> None:
        found = await self._llm.discover(self._window_s)
        # resident models first: the first one is what `local` and `auto` use
        ordered = sorted(found.cards.values(), key=lambda c: c.id not in found.resident)
        self.cards = {card.id: card for card in ordered}
        self.instances, self.resident, self.switch_s = (
            found.instances,
            found.resident,
            found.switch_s,
        )

    async def refresh_on_miss(self) -> None:
        """A request names a model nobody is known to serve: look again, or join the round
        already under way."""
        if self._miss_round is None or self._miss_round.done():
            self._miss_round = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._miss_round)

    def mark_down(self, model: str) -> None:
        """No worker answered a request for `model`: it is gone until discovery finds it."""
        self.cards.pop(model, None)
        self.resident.discard(model)
        if not self.cards:
            self.instances = 0

    def switch_costs(self) -> dict[str, float]:
        """Seconds a request for each non-resident model first spends loading it."""
        return {m: self.switch_s for m in self.cards if m not in self.resident}

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the bus may be reconnecting: keep the last view
                log.exception("router.catalog_refresh_failed")
            await asyncio.sleep(interval_s)

    def windows(self) -> dict[str, int]:
        return {card.id: card.context_length for card in self.cards.values()}
