"""The NPU lease on a real nats-server: exclusion, crash recovery, FIFO, stale holders, slots,
long idle periods, a nats-server restart and a changed TTL."""

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import nats
import pytest
from edge_common import bus
from edge_common.npu_lease import BUCKET, LeaseLost, NpuLease
from nats.js.errors import NotFoundError

WORKER = Path(__file__).with_name("lease_worker.py")
TTL = 1.0


@pytest.fixture
def board() -> str:
    return f"b{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bucket() -> str:
    return f"npu{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_lease(nats_server, board: str, bucket: str) -> AsyncIterator[Callable]:
    made: list[tuple[NpuLease, nats.NATS]] = []

    async def make(owner: str, slots: int = 1) -> NpuLease:
        nc = await nats.connect(nats_server.url, **nats_server.creds("ops"))
        lease = NpuLease(nc, board=board, owner=owner, slots=slots, ttl_s=TTL, bucket=bucket)
        await lease.start()
        made.append((lease, nc))
        return lease

    yield make
    for lease, nc in made:
        await lease.stop()
        await nc.close()


async def until(lease: NpuLease, check: Callable[[NpuLease], bool]) -> None:
    """Wait on the lease's own watcher until `check` holds."""
    async with asyncio.timeout(10):
        await lease.wait_until(lambda _: check(lease))


def worker(nats_server, bucket: str, board: str, name: str, rounds: int, hold_s: float):
    """A lease_worker process, on the bus as the operator (it uses a bucket of its own)."""
    argv = [sys.executable, str(WORKER), nats_server.url, bucket, board, name, str(rounds)]
    env = {**os.environ, **nats_server.passwords}
    return subprocess.Popen([*argv, str(hold_s)], stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_never_hold_together(nats_server, bucket: str, board: str) -> None:
    """Two processes taking the lease 15 times each: their hold intervals never overlap."""
    procs = [worker(nats_server, bucket, board, n, 15, 0.01) for n in ("a", "b")]
    holds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        holds += [json.loads(line) for line in out.splitlines()]
    assert len(holds) == 30
    holds.sort(key=lambda h: h["start"])
    for before, after in itertools.pairwise(holds):
        assert before["end"] <= after["start"], (before, after)
    assert {h["name"] for h in holds} == {"a", "b"}


async def test_killed_holder_loses_lease_within_ttl(nats_server, bucket, board, make_lease) -> None:
    """kill -9 of the holder: its lease expires within the TTL and the waiter proceeds."""
    proc = worker(nats_server, bucket, board, "doomed", 0, 0)
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert json.loads(line)["held"] is True
        waiter = await make_lease("waiter")
        assert [s.owner for s in waiter.status().held] == ["doomed"]
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        async with asyncio.timeout(10), waiter.hold("m"):
            waited = time.monotonic() - killed
    finally:
        proc.kill()
        proc.wait()
    # the key expires at most TTL after the last heartbeat; the server's marker may lag a bit
    assert waited <= TTL + 1.0


async def test_waiters_are_served_in_arrival_order(make_lease) -> None:
    """Three waiters queued one after another get the lease in that order."""
    holder, *waiters = [await make_lease(n) for n in ("holder", "w1", "w2", "w3")]
    order: list[str] = []

    async def take(lease: NpuLease) -> None:
        async with lease.hold("m"):
            order.append(lease.owner)

    async with holder.hold("m"):
        tasks = []
        for i, w in enumerate(waiters, start=1):
            tasks.append(asyncio.create_task(take(w)))
            queued = [f"w{n}" for n in range(1, i + 1)]
            await until(holder, lambda lease, queued=queued: lease.status().waiting == queued)
    await asyncio.gather(*tasks)
    assert order == ["w1", "w2", "w3"]


async def test_stale_holder_heartbeat_is_refused(make_lease) -> None:
    """A holder that stopped renewing loses the lease; its late CAS heartbeat is refused."""
    stale, other = await make_lease("stale"), await make_lease("other")
    async with stale.hold("m") as held:
        held._beat.cancel()
        async with other.hold("m"):
            with pytest.raises(LeaseLost):
                await held.heartbeat()
            assert held.lost.is_set()
        # leaving the stale block must not delete what is now someone else's
    assert [s.owner for s in other.status().held] == []


async def test_a_hold_cancelled_at_any_step_never_keeps_the_slot(make_lease) -> None:
    """Cancelling hold() at each await step, before or after the slot was taken, leaves the
    slot free for the next holder straight away (no orphaned heartbeat keeps it)."""
    lease = await make_lease("flaky")
    for steps in range(40):
        entered = asyncio.Event()
        task = asyncio.create_task(_hold_until_cancelled(lease, entered))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with asyncio.timeout(TTL / 2):  # far sooner than an expiry would free it
            await _hold_once(lease)
        if entered.is_set() and steps > 10:
            break


async def test_cancel_while_the_ticket_is_deleted_still_releases(make_lease) -> None:
    """A cancel that lands right after the slot was taken, while the place in line is being
    given up, must not orphan the slot (it would stay heartbeated forever)."""
    lease, other = await make_lease("cancelled"), await make_lease("next")
    gate = asyncio.Event()
    delete = lease._delete

    async def slow_ticket_delete(key: str, last: int, ours: bytes | None = None) -> None:
        if ".wait." in key:
            await gate.wait()
        await delete(key, last, ours)

    lease._delete = slow_ticket_delete  # type: ignore[method-assign]
    task = asyncio.create_task(_hold_until_cancelled(lease, asyncio.Event()))
    await until(other, lambda observer: [h.owner for h in observer.status().held] == ["cancelled"])
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gate.set()  # the place in line is given up
    async with asyncio.timeout(TTL / 2):  # far sooner than an expiry would free the slot
        await _hold_once(other)


async def test_release_after_an_unheard_renewal_frees_the_slot_at_once(make_lease) -> None:
    """A renewal that landed but whose answer never came back (cut off by the release itself,
    or a timeout) leaves the holder a revision behind: its release still frees the slot then,
    not the TTL."""
    lease, other = await make_lease("holder"), await make_lease("next")
    async with lease.hold("m") as held:
        kv = lease._kv
        assert kv is not None
        await kv.update(held.key, msgspec.json.encode(held.holder), last=held.rev)
    async with asyncio.timeout(TTL / 2):  # far sooner than an expiry would free the slot
        await _hold_once(other)


async def test_a_renewal_that_swallows_its_cancel_does_not_keep_the_slot(make_lease) -> None:
    """Python 3.11's wait_for (inside nats-py's requests) can swallow a cancel: a renewal cut
    off that way at release must neither hold the release up nor renew the released slot
    (the next job on the board once waited for ever)."""
    lease, other = await make_lease("holder"), await make_lease("next")
    renewing = asyncio.Event()

    async def stubborn() -> None:
        renewing.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as wait_for may
            await asyncio.Event().wait()

    async with asyncio.timeout(TTL * 3):
        async with lease.hold("m") as held:
            held.heartbeat = stubborn  # type: ignore[method-assign]
            await renewing.wait()  # released while a renewal is under way
        await _hold_once(other)


async def test_slots_allow_that_many_holders(make_lease) -> None:
    """With two slots two jobs hold at once; a third waits for one of them."""
    a, b, c = [await make_lease(n, slots=2) for n in ("a", "b", "c")]
    async with a.hold("llm"), b.hold("vision"):
        # c's view follows the bucket: wait until it has seen both holders
        await until(c, lambda lease: sorted(s.owner for s in lease.status().held) == ["a", "b"])
        third = asyncio.create_task(_hold_once(c))
        await until(a, lambda lease: lease.status().waiting == ["c"])
        assert not third.done()
    await asyncio.wait_for(third, 10)


async def _hold_until_cancelled(lease: NpuLease, entered: asyncio.Event) -> None:
    async with lease.hold("m"):
        entered.set()
        await asyncio.Event().wait()


async def _hold_once(lease: NpuLease) -> None:
    async with lease.hold("m"):
        pass


async def _forgotten(nc: nats.NATS, bucket: str, key: str) -> None:
    """Until the server has dropped every trace of `key`: its tombstone ages out into a limit
    marker, which expires in turn (without any watcher event)."""
    js = nc.jetstream()
    async with asyncio.timeout(10):
        while True:
            try:
                await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
            except NotFoundError:
                return
            await asyncio.sleep(0.1)  # polling the server: it tells no one when a marker expires


@pytest.mark.parametrize("taker", ["same", "other"])
async def test_the_slot_is_taken_promptly_after_long_idle(make_lease, board, bucket, taker) -> None:
    """After a release and idle periods longer than twice the TTL and the marker TTL (the key's
    tombstone and then its expiry marker are gone), the slot is taken at once: by the
    long-lived lease that held it, or by another one that saw the release."""
    first = await make_lease("first")
    await _hold_once(first)
    lease = first if taker == "same" else await make_lease("other")
    for _ in range(2):
        await asyncio.sleep(2.5 * TTL)  # idle: the scenario itself (marker TTL = TTL here)
        await _forgotten(first._nc, bucket, f"{board}.lease.0")
        async with asyncio.timeout(TTL / 2):  # a stale revision used to loop here for ever
            await _hold_once(lease)


RESTART_TTL = 3.0


async def _bus_lease(stack: AsyncExitStack, server, owner: str, **kw) -> NpuLease:
    """A lease on a connection made as services make theirs (reconnecting for ever)."""
    password = server.passwords["EDGE_OPS_NATS_PASSWORD"]
    nc = await stack.enter_async_context(bus.connect(server.url, "ops", password))
    lease = NpuLease(nc, owner=owner, **kw)
    await lease.start()
    stack.push_async_callback(lease.stop)
    return lease


async def test_the_lease_survives_a_nats_restart(new_nats, tmp_path, board, bucket) -> None:
    """nats-server stops and starts again on its store: the holder keeps its lease through
    the outage, a waiter queued before it is woken by the release, the slot is taken again."""
    with new_nats(tmp_path) as server:
        async with AsyncExitStack() as stack:
            kw = {"board": board, "bucket": bucket, "ttl_s": RESTART_TTL}
            holder = await _bus_lease(stack, server, "holder", **kw)
            waiter = await _bus_lease(stack, server, "waiter", **kw)
            async with holder.hold("m") as held:
                queued = asyncio.create_task(_hold_once(waiter))
                await until(holder, lambda lease: lease.status().waiting == ["waiter"])
                await asyncio.to_thread(server.proc.stop)
                await asyncio.sleep(RESTART_TTL / 2)  # down while a heartbeat falls due
                await asyncio.to_thread(server.restart)
                await asyncio.sleep(RESTART_TTL)  # past the TTL: only heartbeats kept the key
                assert not held.lost.is_set()
                await held.heartbeat()  # the server still has the key as ours
                assert not queued.done()
            async with asyncio.timeout(RESTART_TTL / 2):  # far sooner than an expiry
                await queued
                await _hold_once(holder)


async def test_a_changed_ttl_retunes_the_existing_bucket(new_nats, tmp_path, board) -> None:
    """A worker started with another lease TTL on an existing bucket (as user llm) starts,
    the bucket then has the new TTL, and the lease works."""
    with new_nats(tmp_path) as server:
        async with AsyncExitStack() as stack:
            password = server.passwords["EDGE_LLM_NATS_PASSWORD"]
            nc = await stack.enter_async_context(bus.connect(server.url, "llm", password))
            for ttl in (5.0, 2.0):
                lease = NpuLease(nc, board=board, owner=f"ttl{ttl}", ttl_s=ttl)
                await lease.start()
                stack.push_async_callback(lease.stop)
            config = (await nc.jetstream().stream_info(f"KV_{BUCKET}")).config
            assert (config.max_age, config.subject_delete_marker_ttl) == (2.0, 2.0)
            async with asyncio.timeout(1):
                await _hold_once(lease)
