"""The catalog of local models: shared discovery rounds for unknown names, and when a
model counts as gone."""

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


class Answers:
    """Stands in for LlmClient.discover: each round answers with the next list of models."""

    def __init__(self, *rounds: list[str]) -> None:
        self._rounds = list(rounds)

    async def discover(self, window: float) -> Discovery:
        models = self._rounds.pop(0)
        cards = {m: ModelCard(id=m, context_length=2048) for m in models}
        return Discovery(cards=cards, instances=len(models), resident=set(models), switch_s=0.0)


async def test_a_model_leaves_after_missed_rounds_and_is_remembered_as_down() -> None:
    """One round without a model (a busy worker answering late) keeps it; MISSED_ROUNDS in a
    row move it to `down` (503, not 404); rediscovered, it is back."""
    catalog = LocalCatalog(Answers(["m"], [], [], ["m"]), 0.25)  # type: ignore[arg-type]
    await catalog.refresh()
    await catalog.refresh()
    assert (list(catalog.cards), catalog.down) == (["m"], frozenset())
    await catalog.refresh()
    assert (list(catalog.cards), catalog.down) == ([], frozenset({"m"}))
    await catalog.refresh()
    assert (list(catalog.cards), catalog.down) == (["m"], frozenset())


async def test_no_responders_takes_a_model_down_at_once() -> None:
    """A request that found no worker for a model takes it out of the catalog at once."""
    catalog = LocalCatalog(Answers(["m", "n"]), 0.25)  # type: ignore[arg-type]
    await catalog.refresh()
    catalog.mark_down("m")
    assert (list(catalog.cards), catalog.down) == (["n"], frozenset({"m"}))


class Detectors:
    """Stands in for VisionClient.models: each round answers with the next detectors."""

    def __init__(self, *rounds: dict[str, float]) -> None:
        self._rounds = list(rounds)

    async def models(self, window: float) -> dict[str, float]:
        return self._rounds.pop(0)


async def test_a_detector_is_kept_through_one_late_answer() -> None:
    """Detectors get the chat models' tolerance: one round without the vision worker's STATS
    (busy) keeps its detector; MISSED_ROUNDS in a row take it out; seen again, it is back."""
    answers = Detectors({"d": 0.0}, {}, {}, {"d": 0.0})
    llm = Answers(["m"], ["m"], ["m"], ["m"])
    catalog = LocalCatalog(llm, 0.25, answers)  # type: ignore[arg-type]
    found = []
    for _ in range(4):
        await catalog.refresh()
        found.append(list(catalog.detectors))
    assert found == [["d"], ["d"], [], ["d"]]
