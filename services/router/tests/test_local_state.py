"""Lookups of unknown models: requests that miss together share one discovery round."""

import asyncio

from edge_common.wire import ModelCard
from edge_router.llm_client import Discovery
from edge_router.local_state import LocalCatalog


class Workers:
    """Stands in for LlmClient.discover: counts rounds, answers when released."""

    def __init__(self) -> None:
        self.rounds = 0
        self.release = asyncio.Event()

    async def discover(self, window: float) -> Discovery:
        self.rounds += 1
        await self.release.wait()
        card = ModelCard(id="m", context_length=2048)
        return Discovery(cards={"m": card}, instances=1, resident={"m"}, switch_s=0.0)


async def test_misses_share_the_round_under_way() -> None:
    workers = Workers()
    catalog = LocalCatalog(workers, 0.25)  # type: ignore[arg-type]
    misses = [asyncio.create_task(catalog.refresh_on_miss()) for _ in range(20)]
    await asyncio.sleep(0)  # all 20 now wait on the round under way
    workers.release.set()
    await asyncio.gather(*misses)
    assert workers.rounds == 1
    assert list(catalog.cards) == ["m"]
    await catalog.refresh_on_miss()  # a later miss looks again: a worker may have started
    assert workers.rounds == 2
