"""Which models stay loaded: one pinned, others on demand within a memory budget.

Loading a model that does not fit evicts least-recently-used unpinned models until it does
(the pinned one only when told to). The budget is the smaller of the configured cap (if any)
and what the kernel says is available (MemAvailable, less a reserve, plus what the loaded
models already use). The time a switch takes (load plus evictions) is measured: the router
reads it from the service's STATS and weighs it in routing. Loads run in a thread.
"""

import asyncio
import time
from collections import OrderedDict
from pathlib import Path

import msgspec
import structlog

from edge_llm.backends import Backend

log = structlog.get_logger(__name__)


class CannotFit(RuntimeError):
    """The model does not fit the memory budget even with every unpinned model evicted."""


class ResidencyStatus(msgspec.Struct, frozen=True, kw_only=True):
    resident: list[str]
    """Loaded models, least recently used first."""
    pinned: str
    used_mb: int
    budget_mb: int
    switch_s: float
    """EWMA of how long loading a model (with its evictions) takes; 0 before the first."""
    loads: int
    evictions: int


def mem_available_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no MemAvailable in {meminfo}")


class Residency:
    def __init__(
        self,
        backends: dict[str, Backend],
        *,
        pinned: str,
        cap_mb: int = 0,
        reserve_mb: int = 512,
        meminfo: Path = Path("/proc/meminfo"),
    ) -> None:
        if pinned not in backends:
            raise ValueError(f"pinned model {pinned!r} is not configured")
        self.backends = backends
        self.pinned = pinned
        self._cap_mb = cap_mb
        self._reserve_mb = reserve_mb
        self._meminfo = meminfo
        self._lru: OrderedDict[str, float] = OrderedDict()  # model id -> last used (monotonic)
        self.switch_s = 0.0
        self.loads = self.evictions = 0

    def used_mb(self) -> int:
        return sum(self.backends[m].footprint_mb for m in self._lru)

    def budget_mb(self) -> int:
        system = mem_available_mb(self._meminfo) - self._reserve_mb + self.used_mb()
        return min(system, self._cap_mb) if self._cap_mb else system

    def check_fits(self, model: str) -> None:
        """CannotFit now, rather than after queueing, for a model that can never be loaded."""
        room = self.budget_mb() - (
            0 if model == self.pinned else self.backends[self.pinned].footprint_mb
        )
        need = self.backends[model].footprint_mb
        if need > room:
            raise CannotFit(
                f"Model `{model}` needs about {need} MB; the memory budget leaves {room} MB "
                f"beside the pinned model `{self.pinned}`."
            )

    async def ensure(self, model: str) -> Backend:
        """The model, loaded (evicting others if needed). Callers serialise their calls."""
        backend = self.backends[model]
        if model in self._lru:
            self._lru[model] = time.monotonic()
            self._lru.move_to_end(model)
            return backend
        self.check_fits(model)
        started = time.monotonic()
        budget = self.budget_mb()
        for victim in [m for m in self._lru if m != self.pinned]:
            if self.used_mb() + backend.footprint_mb <= budget:
                break
            self._unload(victim, "evicted")
        await asyncio.to_thread(backend.load)
        self._lru[model] = time.monotonic()
        elapsed = time.monotonic() - started
        self.switch_s = elapsed if not self.loads else 0.7 * self.switch_s + 0.3 * elapsed
        self.loads += 1
        log.info("llm.model_loaded", model=model, seconds=round(elapsed, 3), used_mb=self.used_mb())
        return backend

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
        self.backends[model].unload()
        del self._lru[model]
        self.evictions += why == "evicted"
        log.info("llm.model_unloaded", model=model, reason=why)

    def resident(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._lru)

    def status(self) -> ResidencyStatus:
        return ResidencyStatus(
            resident=self.resident(),
            pinned=self.pinned,
            used_mb=self.used_mb(),
            budget_mb=self.budget_mb(),
            switch_s=round(self.switch_s, 3),
            loads=self.loads,
            evictions=self.evictions,
        )
