"""Which models a worker keeps loaded: one pinned, others on demand within the board's budget.

Memory is one budget per board, shared by every worker on it (llm, vision, ...). Each
worker's Residency records what it holds in the board's ledger (edge_common.ledger); the
budget it sees is the board's (EDGE_BOARD_MEMORY_MB, else MemAvailable less a reserve plus
what the workers hold) less what the *other* workers hold, and at most its own cap.

Loading a model that does not fit evicts this worker's least-recently-used unpinned models
(never one in use, the pinned one never), then asks the other workers of the board to free
unpinned memory they are not using, then loads. The time a switch takes (evictions, the
others' answers and the load) is measured as an EWMA: services publish it in their STATS
and the router weighs it in routing. Loads run in a thread.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import msgspec
import structlog
from nats.aio.client import Client

from edge_common.ledger import BoardLedger, Holding
from edge_common.npu_lease import default_board
from edge_common.settings import WorkerSettings

log = structlog.get_logger(__name__)
SWITCH_EWMA = 0.3
"""Weight of the newest switch in switch_s."""


class Loadable(Protocol):
    """What a Residency loads: a model's weights, loaded or not."""

    footprint_mb: int
    """Memory the loaded model takes."""

    def load(self) -> None:
        """Load the weights (blocking: seconds on the board); a no-op when loaded."""
        ...

    def unload(self) -> None: ...


M = TypeVar("M", bound=Loadable)


class CannotFit(RuntimeError):
    """The model does not fit the memory budget even with every unpinned model evicted."""


class ResidencyStatus(msgspec.Struct, frozen=True, kw_only=True):
    resident: list[str]
    """Loaded models, least recently used first."""
    pinned: str
    used_mb: int
    budget_mb: int
    """What this worker may hold now: the board's budget less the other workers' share."""
    others_mb: int
    """What the other workers of the board hold (the ledger)."""
    switch_s: float
    """EWMA of how long loading a model (with its evictions) takes; 0 before the first."""
    loads: int
    evictions: int


def mem_available_mb(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int:
    """MemAvailable, or less when our cgroup (v2: a container's memory limit) leaves less:
    inside a container /proc/meminfo is the host's."""
    available = next(
        (
            int(line.split()[1]) // 1024
            for line in meminfo.read_text().splitlines()
            if line.startswith("MemAvailable:")
        ),
        None,
    )
    if available is None:
        raise RuntimeError(f"no MemAvailable in {meminfo}")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        current = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):  # no cgroup v2 memory controller here
        return available
    if limit == "max":
        return available
    return min(available, (int(limit) - current) // 2**20)


def _nothing_in_use() -> Collection[str]:
    return ()


class Residency(Generic[M]):
    def __init__(
        self,
        models: dict[str, M],
        *,
        pinned: str,
        board_mb: int = 0,
        cap_mb: int = 0,
        reserve_mb: int = 512,
        meminfo: Path = Path("/proc/meminfo"),
        cgroup: Path = Path("/sys/fs/cgroup"),
        ledger: BoardLedger | None = None,
        service: str = "worker",
    ) -> None:
        if pinned not in models:
            raise ValueError(f"pinned model {pinned!r} is not configured")
        self.models = models
        self.pinned = pinned
        self._board_mb, self._cap_mb = board_mb, cap_mb
        self._reserve_mb = reserve_mb
        self._meminfo, self._cgroup = meminfo, cgroup
        self._ledger = ledger
        self._service = service
        self._lru: OrderedDict[str, float] = OrderedDict()  # model id -> last used (monotonic)
        self._loading: str | None = None
        self.in_use: Callable[[], Collection[str]] = _nothing_in_use
        """Models a job of this worker uses now: never evicted (the service sets it)."""
        self.switch_s = 0.0
        self.loads = self.evictions = 0

    def used_mb(self) -> int:
        """What the loaded models take (a model being loaded is not in memory yet)."""
        return sum(self.models[m].footprint_mb for m in self._lru)

    def _others(self) -> Holding:
        return self._ledger.others() if self._ledger else Holding()

    def budget_mb(self, others_freeing_mb: int = 0) -> int:
        """What this worker may hold now (if the others freed `others_freeing_mb` more)."""
        if self._board_mb:
            room = self._board_mb - self._others().total_mb
        else:  # MemAvailable already leaves out what the other workers hold
            room = mem_available_mb(self._meminfo, self._cgroup) - self._reserve_mb + self.used_mb()
        room += others_freeing_mb
        return min(room, self._cap_mb) if self._cap_mb else room

    def check_fits(self, model: str) -> None:
        """CannotFit now, rather than after queueing, for a model that can never be loaded:
        not even with every unpinned model of the board unloaded."""
        room = self.budget_mb(self._others().unpinned_mb) - (
            0 if model == self.pinned else self.models[self.pinned].footprint_mb
        )
        need = self.models[model].footprint_mb
        if need > room:
            raise CannotFit(
                f"Model `{model}` needs about {need} MB; the board's memory budget leaves "
                f"{room} MB beside the pinned models."
            )

    async def ensure(self, model: str) -> M:
        """The model, loaded (evicting others if needed). Callers serialise their calls."""
        loadable = self.models[model]
        if model in self._lru:
            self._lru[model] = time.monotonic()
            self._lru.move_to_end(model)
            return loadable
        self.check_fits(model)
        started = time.monotonic()
        need = loadable.footprint_mb
        budget = self.budget_mb()
        self._free(self.used_mb() + need - budget, "evicted")
        if (short := self.used_mb() + need - budget) > 0 and self._ledger:
            freed = await self._ledger.ask_to_free(short)
            # the ledger shows what the others freed at once; MemAvailable maybe not yet
            budget = self.budget_mb() if self._board_mb else budget + freed
        if (room := budget - self.used_mb()) < need:
            raise CannotFit(
                f"Model `{model}` needs about {need} MB; the board's memory budget leaves "
                f"{room} MB with what is in use now. Try again."
            )
        self._loading = model
        try:
            if self._ledger:  # claim the memory before taking it: others plan with it
                await self._ledger.claim()
            await asyncio.to_thread(loadable.load)
            self._lru[model] = time.monotonic()
        finally:
            self._loading = None
            self._changed()
        elapsed = time.monotonic() - started
        self.switch_s = (
            elapsed if not self.loads else (1 - SWITCH_EWMA) * self.switch_s + SWITCH_EWMA * elapsed
        )
        self.loads += 1
        log.info(
            f"{self._service}.model_loaded",
            model=model,
            seconds=round(elapsed, 3),
            used_mb=self.used_mb(),
        )
        return loadable

    def _free(self, want_mb: int, why: str) -> list[str]:
        """Unload unpinned models not in use, least recently used first, until `want_mb` are
        freed (or none is left to unload)."""
        in_use = self.in_use()
        freed: list[str] = []
        for victim in [m for m in self._lru if m != self.pinned and m not in in_use]:
            if want_mb <= 0:
                break
            want_mb -= self.models[victim].footprint_mb
            self._unload(victim, why)
            freed.append(victim)
        return freed

    def free_for_other(self, want_mb: int) -> list[str]:
        """Another worker of the board needs `want_mb`: unload what we can spare of it."""
        return self._free(want_mb, "asked")

    def unload_idle(self, keep_alive_s: float) -> list[str]:
        """Unload unpinned models unused for `keep_alive_s`; the caller holds the model lock."""
        now = time.monotonic()
        idle = [
            m for m, used in self._lru.items() if m != self.pinned and now - used > keep_alive_s
        ]
        for model in idle:
            self._unload(model, "idle")
        return idle

    def _unload(self, model: str, why: str) -> None:
        self.models[model].unload()
        del self._lru[model]
        self.evictions += why != "idle"
        log.info(f"{self._service}.model_unloaded", model=model, reason=why)
        self._changed()

    def _changed(self) -> None:
        if self._ledger:
            self._ledger.poke()

    def holding(self) -> Holding:
        """What this worker holds, as the ledger records it (a load under way included)."""
        held = {m: self.models[m].footprint_mb for m in self._lru}
        if self._loading:
            held[self._loading] = self.models[self._loading].footprint_mb
        pinned = held.get(self.pinned, 0)
        return Holding(total_mb=sum(held.values()), pinned_mb=pinned, models=held)

    def resident(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._lru)

    def status(self) -> ResidencyStatus:
        return ResidencyStatus(
            resident=self.resident(),
            pinned=self.pinned,
            used_mb=self.used_mb(),
            budget_mb=self.budget_mb(),
            others_mb=self._others().total_mb,
            switch_s=round(self.switch_s, 3),
            loads=self.loads,
            evictions=self.evictions,
        )


async def board_residency(
    stack: AsyncExitStack,
    nc: Client,
    settings: WorkerSettings,
    service: str,
    models: dict[str, M],
    pinned: str,
) -> Residency[M]:
    """A Residency as `settings` configure it, in the board's ledger until `stack` closes
    (started after the board's NPU lease: the ledger lives in its bucket)."""
    ledger = BoardLedger(
        nc, board=settings.board or default_board(), service=service, ttl_s=settings.lease_ttl_s
    )
    residency = Residency(
        models,
        pinned=pinned,
        board_mb=settings.board_memory_mb,
        cap_mb=settings.memory_budget_mb,
        reserve_mb=settings.memory_reserve_mb,
        ledger=ledger,
        service=service,
    )
    await ledger.start(residency.holding, residency.free_for_other)
    stack.push_async_callback(ledger.stop)
    return residency
