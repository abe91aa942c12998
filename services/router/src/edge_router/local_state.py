"""What the router knows of the local side: the models served, which are loaded, what a
switch costs, and how many workers there are.

Refreshed from the services' micro STATS in the background, at once when a service announces
that it started (`up.<service>`), and when a request names a model it does not know
(requests that miss together share one round: a flood of unknown names costs one round at a
time, not one each).

A model (a chat model, a detector or an embedder) leaves the catalog when MISSED_ROUNDS
discovery rounds in a row did not hear of it (one late STATS answer from a busy worker is no
reason to stop routing to it), and a chat model also when a request for it finds no worker
(NATS knows at once). A chat model that left is remembered as `down`, so that a request
naming it gets 503 and Retry-After, not 404.
"""

import asyncio
from typing import TYPE_CHECKING, TypeVar

import structlog
from edge_common.protocol.vision import DEFAULT_MODEL
from edge_common.wire import ModelCard, up_subject
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge_router.llm_client import LlmClient

if TYPE_CHECKING:
    from edge_common.protocol.rag import RagStats

    from edge_router.rag import RagClient
    from edge_router.vision import VisionClient

log = structlog.get_logger(__name__)
MISSED_ROUNDS = 2
T = TypeVar("T")


async def _nothing(empty: T) -> T:
    return empty


def _kept(missed: dict[str, int], before: dict[str, T], found: dict[str, T]) -> dict[str, T]:
    """`found`, and what `before` had that fewer than MISSED_ROUNDS rounds in a row missed
    (counted in `missed`)."""
    for key in before.keys() - found.keys():
        missed[key] = missed.get(key, 0) + 1
    for key in found:
        missed.pop(key, None)
    kept = {k: v for k, v in before.items() if k not in found and missed[k] < MISSED_ROUNDS}
    for key in missed.keys() - kept.keys():
        del missed[key]  # gone: a later return starts counting afresh
    return kept | found


class LocalCatalog:
    def __init__(
        self,
        llm: LlmClient,
        window_s: float,
        vision: "VisionClient | None" = None,
        rag: "RagClient | None" = None,
    ) -> None:
        self._llm = llm
        self._vision = vision
        self._rag = rag
        self.embedders: dict[str, RagStats] = {}
        """The embedders the rag workers serve, with their dimension."""
        self._window_s = window_s
        self.detectors: list[str] = []
        """The detectors the vision workers serve, the default one first."""
        self.detector_switch_s: dict[str, float] = {}
        self.detectors_seen: set[str] = set()
        """Every detector served since start (one gone is down, not unconfigured)."""
        """Detector -> seconds a detection first spends loading it (0: loaded)."""
        self._miss_round: asyncio.Future[None] | None = None
        self._announced: asyncio.Future[None] | None = None
        self._heard = 0
        """Announcements heard so far."""
        self._miss_heard = 0
        """`_heard` when the current miss round began."""
        self.cards: dict[str, ModelCard] = {}
        self.down: frozenset[str] = frozenset()
        """Models served before and gone now."""
        self._missed: dict[str, int] = {}
        self._missed_detectors: dict[str, int] = {}
        self._missed_embedders: dict[str, int] = {}
        self.instances = 0
        self.resident: set[str] = set()
        self.switch_s = 0.0

    async def refresh(self) -> None:
        # one discovery window for every service
        found, detectors, embedders = await asyncio.gather(
            self._llm.discover(self._window_s),
            self._vision.models(self._window_s) if self._vision else _nothing({}),
            self._rag.embedders(self._window_s) if self._rag else _nothing({}),
        )
        # the default detector first: it is the one that describes images to a chat model
        self.detector_switch_s = _kept(self._missed_detectors, self.detector_switch_s, detectors)
        self.detectors = sorted(self.detector_switch_s, key=lambda d: (d != DEFAULT_MODEL, d))
        self.detectors_seen |= set(detectors)
        self.embedders = _kept(self._missed_embedders, self.embedders, embedders)
        cards = _kept(self._missed, self.cards, found.cards)
        gone = self.cards.keys() - cards.keys()
        # resident models first: the first one is what `local` and `auto` use
        ordered = sorted(cards.values(), key=lambda c: c.id not in found.resident)
        self.cards = {card.id: card for card in ordered}
        self.down = (self.down | gone) - self.cards.keys()
        self.instances, self.resident, self.switch_s = (
            found.instances,
            found.resident,
            found.switch_s,
        )

    async def refresh_on_miss(self) -> None:
        """A request names a model nobody is known to serve: look again, or join the round
        another miss started, unless a service announced itself since that round began (it
        asked before the service was there)."""
        if self._miss_round is None or self._miss_round.done() or self._miss_heard != self._heard:
            self._miss_round = asyncio.ensure_future(self.refresh())
            self._miss_heard = self._heard
        await asyncio.shield(self._miss_round)

    async def hear_announcements(self, nc: Client) -> Subscription:
        """Look each time a service announces that it started, in a round begun after the
        announcement (one under way may have asked before the service was there); the
        announcements heard during a round cost one more round, not one each."""

        async def heard(_: Msg) -> None:
            self._heard += 1
            if self._announced is None or self._announced.done():
                self._announced = asyncio.ensure_future(self._announced_rounds())

        return await nc.subscribe(up_subject("*"), cb=heard)

    async def _announced_rounds(self) -> None:
        looked = -1
        while looked != self._heard:
            looked = self._heard
            try:
                await self.refresh()
            except Exception:  # the bus may be reconnecting: the next round will do
                log.exception("router.catalog_refresh_failed")

    async def settled(self) -> None:
        """Join the rounds services' announcements started, if any are under way (nothing
        to wait for otherwise: a side with nothing running is no reason to look again on
        every request; services say when they start)."""
        if self._announced is not None and not self._announced.done():
            await asyncio.shield(self._announced)

    def mark_down(self, model: str) -> None:
        """No worker answered a request for `model`: it is gone until discovery finds it."""
        if self.cards.pop(model, None) is not None:
            self.down |= {model}
        self._missed.pop(model, None)
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
