"""The admission queue: bounds, priorities, deadlines, cancellation (no clock needed)."""

import asyncio

import pytest
from edge_router.admission import Admission
from edge_router.errors import RateLimited


async def run(admission: Admission, name: str, order: list[str], gate: asyncio.Event, **kw) -> None:
    async with admission.slot(**kw):
        order.append(name)
        await gate.wait()


async def settle() -> None:
    """Let the tasks started so far run up to their first wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    """One runs, `depth` wait; the next is refused at once with 429 queue_full."""
    admission = Admission(depth=2, concurrency=lambda: 1, initial_service_s=3.0)
    gate, order = asyncio.Event(), []
    tasks = [asyncio.create_task(run(admission, f"r{i}", order, gate)) for i in range(3)]
    await settle()
    assert (admission.running, admission.waiting) == (1, 2)
    with pytest.raises(RateLimited) as err:
        async with admission.slot():
            pass
    assert err.value.code == "queue_full"
    assert int(err.value.headers["retry-after"]) == 9  # two ahead, then ours: 3 x 3 s
    assert admission.status().rejected == 1
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["r0", "r1", "r2"]
    assert (admission.running, admission.waiting) == (0, 0)


async def test_higher_priority_goes_first_then_arrival_order() -> None:
    """Waiters run by priority, and first come first served within one."""
    admission = Admission(depth=8, concurrency=lambda: 1)
    gate, order = asyncio.Event(), []
    first = asyncio.create_task(run(admission, "running", order, gate))
    await settle()
    tasks = [
        asyncio.create_task(run(admission, name, order, gate, priority=p))
        for name, p in [("low-a", 0), ("high-a", 5), ("low-b", 0), ("high-b", 5)]
    ]
    await settle()
    gate.set()
    await asyncio.gather(first, *tasks)
    assert order == ["running", "high-a", "high-b", "low-a", "low-b"]


async def test_deadline_shorter_than_estimate_is_refused_at_once() -> None:
    """A deadline below the estimated wait gets 429 without queueing."""
    admission = Admission(depth=8, concurrency=lambda: 1, initial_service_s=2.0)
    gate = asyncio.Event()
    busy = asyncio.create_task(run(admission, "busy", [], gate))
    await settle()
    with pytest.raises(RateLimited) as err:
        async with admission.slot(deadline_s=1.5):
            pass
    assert err.value.code == "queue_wait_exceeds_deadline"
    assert admission.waiting == 0
    async with asyncio.timeout(1):  # a deadline the estimate fits is queued, then served
        waiter = asyncio.create_task(run(admission, "fits", [], gate, deadline_s=2.5))
        await settle()
        assert admission.waiting == 1
        gate.set()
        await asyncio.gather(busy, waiter)


async def test_cancelled_waiter_leaves_and_never_runs() -> None:
    """A waiter whose client went away is dropped; the next one takes the place."""
    admission = Admission(depth=8, concurrency=lambda: 1)
    gate, order = asyncio.Event(), []
    busy = asyncio.create_task(run(admission, "busy", order, gate))
    gone = asyncio.create_task(run(admission, "gone", order, gate))
    after = asyncio.create_task(run(admission, "after", order, gate))
    await settle()
    gone.cancel()
    await settle()
    assert admission.waiting == 1
    gate.set()
    await asyncio.gather(busy, after)
    assert gone.cancelled()
    assert order == ["busy", "after"]


async def test_concurrency_follows_worker_count() -> None:
    """With two workers two requests run at once."""
    workers = [2]
    admission = Admission(depth=8, concurrency=lambda: workers[0])
    gate, order = asyncio.Event(), []
    tasks = [asyncio.create_task(run(admission, f"r{i}", order, gate)) for i in range(3)]
    await settle()
    assert (admission.running, admission.waiting) == (2, 1)
    gate.set()
    await asyncio.gather(*tasks)
