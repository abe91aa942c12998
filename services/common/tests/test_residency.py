"""The generic residency: on its own, LRU eviction within a budget, the pinned model and
models in use never evicted, freeing for another worker, the MemAvailable budget; then two
workers sharing a board's budget through the ledger on a real nats-server (one frees unpinned
memory the other needs, never a model in use; a stopped worker's share is freed at once)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from edge_common.ledger import BoardLedger
from edge_common.npu_lease import NpuLease
from edge_common.residency import CannotFit, Residency, mem_available_mb

TTL = 2.0
BOARD_MB = 30


class Weights:
    """A Loadable that really takes its footprint in memory while loaded."""

    def __init__(self, mb: int) -> None:
        self.footprint_mb = mb
        self.data: bytearray | None = None

    @property
    def loaded(self) -> bool:
        return self.data is not None

    def load(self) -> None:
        self.data = self.data or bytearray(self.footprint_mb * 2**20)

    def unload(self) -> None:
        self.data = None


def models(**sizes: int) -> dict[str, Weights]:
    return {name: Weights(mb) for name, mb in sizes.items()}


async def test_lru_unpinned_models_make_room_within_the_board_budget() -> None:
    """With room for the pinned model and one more, each switch evicts the least recently
    used unpinned model; the pinned one stays; the budget is never exceeded."""
    held = models(a=10, b=10, c=10)
    residency = Residency(held, pinned="a", board_mb=25)
    seen = []
    for model in ["a", "b", "c", "a", "b"]:
        assert (await residency.ensure(model)).loaded
        assert residency.used_mb() <= 25
        seen.append(residency.resident())
    assert seen == [["a"], ["a", "b"], ["a", "c"], ["c", "a"], ["a", "b"]]
    status = residency.status()
    assert (status.loads, status.evictions, status.budget_mb) == (4, 2, 25)
    assert status.switch_s > 0
    assert not held["c"].loaded


async def test_a_model_in_use_is_never_evicted() -> None:
    """A model a job uses now stays loaded: the load that needs its room is refused."""
    residency = Residency(models(a=10, b=10, c=10), pinned="a", board_mb=25)
    await residency.ensure("a")
    await residency.ensure("b")
    residency.in_use = lambda: ["b"]
    with pytest.raises(CannotFit, match="in use"):
        await residency.ensure("c")
    assert residency.resident() == ["a", "b"]


async def test_freeing_for_another_worker_unloads_only_what_is_needed() -> None:
    """free_for_other unloads unpinned models not in use, least recently used first, until
    the amount asked is freed; never the pinned one."""
    residency = Residency(models(a=10, b=10, c=10, d=10), pinned="a", board_mb=100)
    for model in ["a", "b", "c", "d"]:
        await residency.ensure(model)
    assert residency.free_for_other(5) == ["b"]
    residency.in_use = lambda: ["c"]
    assert residency.free_for_other(100) == ["d"]
    assert residency.resident() == ["a", "c"]
    holding = residency.holding()
    assert (holding.total_mb, holding.pinned_mb, holding.models) == (20, 10, {"a": 10, "c": 10})


async def test_a_model_that_can_never_fit_is_refused_up_front() -> None:
    """Beside the pinned model, the board's budget and the worker's own cap both bound what
    can load; check_fits says so before any eviction."""
    residency = Residency(models(a=10, b=10, big=20), pinned="a", board_mb=25)
    await residency.ensure("a")
    await residency.ensure("b")
    with pytest.raises(CannotFit, match="big"):
        residency.check_fits("big")
    assert residency.resident() == ["a", "b"]
    capped = Residency(models(a=10, b=10), pinned="a", board_mb=100, cap_mb=15)
    with pytest.raises(CannotFit, match="`b`"):
        await capped.ensure("b")


def test_without_a_board_size_the_budget_is_mem_available_less_the_reserve(
    tmp_path: Path,
) -> None:
    """EDGE_BOARD_MEMORY_MB unset: MemAvailable (which already leaves out what every process
    holds) less the reserve, plus what this worker holds."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 4194304 kB\nMemAvailable: 1048576 kB\n")
    residency = Residency(models(a=10), pinned="a", reserve_mb=512, meminfo=meminfo)
    assert residency.budget_mb() == 1024 - 512
    capped = Residency(models(a=10), pinned="a", cap_mb=100, meminfo=meminfo)
    assert capped.budget_mb() == 100


def test_in_a_container_the_cgroup_limit_bounds_the_budget(tmp_path: Path) -> None:
    """Inside a container /proc/meminfo is the host's: a cgroup v2 memory limit leaving less
    (limit less usage) is what counts; no limit ("max") leaves MemAvailable."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 4194304 kB\n")  # the host: 4 GB free
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{1536 * 2**20}\n")  # compose: mem_limit 1.5 GB
    (cgroup / "memory.current").write_text(f"{512 * 2**20}\n")
    assert mem_available_mb(meminfo, cgroup) == 1024
    (cgroup / "memory.max").write_text("max\n")
    assert mem_available_mb(meminfo, cgroup) == 4096
    residency = Residency(
        models(a=10), pinned="a", reserve_mb=0, meminfo=meminfo, cgroup=tmp_path / "none"
    )
    assert residency.budget_mb() == 4096


@pytest.fixture
async def make_worker(nats_server) -> AsyncIterator[Callable]:
    """Workers of one board (a bucket of their own, made by an NPU lease as in a service)."""
    board, bucket = f"b{uuid.uuid4().hex[:8]}", f"npu{uuid.uuid4().hex[:8]}"
    made: list[tuple[BoardLedger, NpuLease, nats.NATS]] = []

    async def make(
        service: str, held: dict[str, Weights], pinned: str
    ) -> tuple[Residency[Weights], BoardLedger]:
        nc = await nats.connect(nats_server.url, **nats_server.creds("ops"))
        lease = NpuLease(nc, board=board, owner=service, ttl_s=TTL, bucket=bucket)
        await lease.start()
        ledger = BoardLedger(nc, board=board, service=service, ttl_s=TTL, bucket=bucket)
        residency = Residency(
            held, pinned=pinned, board_mb=BOARD_MB, ledger=ledger, service=service
        )
        await ledger.start(residency.holding, residency.free_for_other)
        made.append((ledger, lease, nc))
        return residency, ledger

    yield make
    for ledger, lease, nc in made:
        await ledger.stop()
        await lease.stop()
        await nc.close()


async def seen(ledger: BoardLedger, others_mb: int) -> None:
    async with asyncio.timeout(5):
        await ledger.wait_until(lambda others: others.total_mb == others_mb)


async def test_another_worker_unloads_its_unpinned_model_to_make_room(make_worker) -> None:
    """llm holds a pinned and an unpinned model (20 of the board's 30 MB); vision's model
    does not fit beside them: llm unloads its unpinned one, vision's loads, the ledger shows
    both shares and the switch is timed."""
    llm, llm_ledger = await make_worker("llm", models(a=10, b=10), "a")
    await llm.ensure("a")
    await llm.ensure("b")
    vision, vision_ledger = await make_worker("vision", models(v=5, big=10), "v")
    await seen(vision_ledger, 20)
    await vision.ensure("v")
    assert vision.budget_mb() == BOARD_MB - 20
    await vision.ensure("big")
    assert llm.resident() == ["a"]
    assert vision.resident() == ["v", "big"]
    assert vision.status().others_mb == 10
    assert vision.switch_s > 0
    await seen(llm_ledger, 15)


async def test_a_model_in_use_is_not_freed_for_another_worker(make_worker) -> None:
    """The unpinned model a job uses now stays: the other worker's load is refused."""
    llm, _ = await make_worker("llm", models(a=10, b=10), "a")
    await llm.ensure("a")
    await llm.ensure("b")
    llm.in_use = lambda: ["b"]
    vision, vision_ledger = await make_worker("vision", models(v=5, big=10), "v")
    await seen(vision_ledger, 20)
    await vision.ensure("v")
    with pytest.raises(CannotFit, match="big"):
        await vision.ensure("big")
    assert llm.resident() == ["a", "b"]
    assert vision.resident() == ["v"]


async def test_a_stopped_worker_frees_its_share_at_once(make_worker) -> None:
    """A worker that stops deletes its entry: the others' budget grows before any TTL."""
    llm, llm_ledger = await make_worker("llm", models(a=10), "a")
    await llm.ensure("a")
    vision, vision_ledger = await make_worker("vision", models(v=5), "v")
    await seen(vision_ledger, 10)
    async with asyncio.timeout(TTL / 2):
        await llm_ledger.stop()
        await seen(vision_ledger, 0)
    assert vision.budget_mb() == BOARD_MB
