"""The NPU lease: at most `slots` jobs on a board's NPU at once, across processes.

JetStream KV bucket (history 1, TTL = lease TTL, with limit markers so that an expiry is
seen by watchers). Keys per board:

    <board>.lease.<slot>    the holder of a slot: created/CAS-updated by it, deleted on release
    <board>.wait.<ticket>   a waiter's place in line: its first revision orders the queue

Acquire = queue a ticket, then, when among the first `free slots` tickets, take a free slot
by CAS on its last revision. Heartbeat = CAS update (a stale holder is refused and learns it
lost the lease). Release = CAS delete. A crashed holder stops heartbeating: its key expires
after the TTL and the expiry marker wakes the waiters. Everything waits on the key watcher.
"""

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

import msgspec
import structlog
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)
BUCKET: Final = "npu"


class Holder(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    model: str
    since: float
    """Unix time the lease (or the place in line) was taken."""
    order: int = 0
    """A ticket's first revision, kept across its heartbeats (0 until known)."""


class SlotStatus(msgspec.Struct, frozen=True, kw_only=True):
    slot: int
    owner: str
    model: str
    age_s: float


class LeaseStatus(msgspec.Struct, frozen=True, kw_only=True):
    board: str
    slots: int
    held: list[SlotStatus]
    waiting: list[str]
    """Owners waiting for a slot, first in line first."""


class LeaseLost(RuntimeError):
    """The lease expired or was taken over while we thought we held it."""


_holder = msgspec.json.Decoder(Holder)
_encode = msgspec.json.Encoder().encode


def default_board() -> str:
    return socket.gethostname().replace(".", "-")


class _View:
    """The board's keys as the watcher last reported them."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[int, Holder]] = {}
        self.tombstones: dict[str, int] = {}
        self.version = 0
        self.changed = asyncio.Condition()

    async def apply(self, entry: KeyValue.Entry) -> None:
        async with self.changed:
            self._apply(entry)
            self.version += 1
            self.changed.notify_all()

    def _apply(self, entry: KeyValue.Entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.live.pop(entry.key, None)
            self.tombstones[entry.key] = entry.revision
        else:
            self.live[entry.key] = (entry.revision, _holder.decode(entry.value))
            self.tombstones.pop(entry.key, None)

    def line(self) -> list[tuple[int, str, Holder]]:
        """The waiting tickets, first in line first: ordered by their first revision."""
        return sorted(
            (h.order or rev, key, h) for key, (rev, h) in self.live.items() if ".wait." in key
        )

    def last_revision(self, key: str) -> int:
        """What a CAS on `key` must name: its live or tombstone revision, 0 if never written."""
        if key in self.live:
            return self.live[key][0]
        return self.tombstones.get(key, 0)


class NpuLease:
    def __init__(
        self,
        nc: Client,
        *,
        board: str,
        owner: str,
        slots: int = 1,
        ttl_s: float = 5.0,
        bucket: str = BUCKET,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self.board = board
        self.owner = owner
        self.slots = slots
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._view = _View()
        self._watch_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        js = self._nc.jetstream()
        config = KeyValueConfig(
            bucket=self._bucket, history=1, ttl=self.ttl_s, limit_marker_ttl=max(1.0, self.ttl_s)
        )
        self._kv = await js.create_key_value(config)
        ready = asyncio.Event()
        self._watch_task = asyncio.create_task(self._follow(ready))
        await ready.wait()

    async def _follow(self, ready: asyncio.Event) -> None:
        """Keep the view in step with the bucket; a broken watch is logged and restarted."""
        kv = self._kv
        assert kv is not None
        while True:
            try:
                watcher = await kv.watch(f"{self.board}.>")
                async for entry in watcher:  # None marks the end of the initial values
                    if entry is None:
                        ready.set()
                    else:
                        await self._view.apply(entry)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("npu.lease_watch_failed", board=self.board)
                self._view.live.clear()  # rebuilt from the initial values of the next watch

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()

    async def wait_until(self, check: Callable[[LeaseStatus], bool]) -> LeaseStatus:
        """The status, once the watcher has shown one that satisfies `check`."""
        async with self._view.changed:
            await self._view.changed.wait_for(lambda: check(self.status()))
            return self.status()

    def status(self) -> LeaseStatus:
        now = time.time()
        held = [
            SlotStatus(
                slot=int(key.rsplit(".", 1)[1]),
                owner=h.owner,
                model=h.model,
                age_s=round(now - h.since, 3),
            )
            for key, (_, h) in sorted(self._view.live.items())
            if ".lease." in key
        ]
        waiting = [h.owner for _, _, h in self._view.line()]
        return LeaseStatus(board=self.board, slots=self.slots, held=held, waiting=waiting)

    @contextlib.asynccontextmanager
    async def hold(self, model: str) -> AsyncIterator["Held"]:
        """Wait in line for a slot, hold it (heartbeating) for the block, release it."""
        held = await self._acquire(model)
        # no await between getting the slot and the try: a cancel cannot land there
        try:
            yield held
        finally:
            await asyncio.shield(held.release())

    async def _acquire(self, model: str) -> "Held":
        kv = self._kv
        assert kv is not None, "start() first"
        key = f"{self.board}.wait.{self._nc.new_inbox().rsplit('.', 1)[1]}"
        me = Holder(owner=self.owner, model=model, since=time.time())
        order = await self._claim(key, kv.create(key, _encode(me)))
        ticket = Held(self, key, order, msgspec.structs.replace(me, order=order))
        try:
            seen = -1
            while True:
                async with self._view.changed:
                    # our turn, in a view newer than the one a failed take was based on
                    await self._view.changed.wait_for(
                        lambda seen=seen: (
                            self._view.version > seen and self._free_slot_for(key, order)
                        )
                    )
                    seen = self._view.version
                slot = self._free_slot_for(key, order)
                lease_key = f"{self.board}.lease.{slot - 1}"
                holder = msgspec.structs.replace(me, since=time.time())
                if held := await self._take(lease_key, holder):
                    log.info("npu.lease_acquired", key=lease_key, model=model)
                    return held
        finally:
            # in the background: awaiting here would let a cancel orphan a slot just taken
            self._spawn(ticket.release())

    async def _take(self, key: str, holder: Holder) -> "Held | None":
        """CAS the slot's key to us; None if someone was faster."""
        kv = self._kv
        assert kv is not None
        last = self._view.last_revision(key)
        try:
            rev = await self._claim(key, kv.update(key, _encode(holder), last=last))
        except KeyWrongLastSequenceError:
            return None
        return Held(self, key, rev, holder)

    async def _claim(self, key: str, write: Coroutine[Any, Any, int]) -> int:
        """Await a write that claims `key`; if we are cancelled meanwhile, the write still
        lands, so delete what it wrote then: a claim nobody keeps alive would block others."""
        pending = asyncio.ensure_future(write)
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            pending.add_done_callback(lambda done: self._undo(key, done))
            raise

    def _undo(self, key: str, write: "asyncio.Future[int]") -> None:
        if not write.cancelled() and write.exception() is None:
            self._spawn(self._delete(key, last=write.result()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _free_slot_for(self, ticket: str, order: int) -> int:
        """1 + a free slot index if `ticket` is within the first (free slots) waiters, else 0."""
        live = self._view.live
        free = [s for s in range(self.slots) if f"{self.board}.lease.{s}" not in live]
        # tickets ahead of ours (our own create may not have been watched yet: use `order`)
        place = sum(1 for first, key, _ in self._view.line() if key != ticket and first < order)
        return free[place] + 1 if place < len(free) else 0

    async def _delete(self, key: str, last: int) -> None:
        kv = self._kv
        assert kv is not None
        try:
            await kv.delete(key, last=last)
        except KeyWrongLastSequenceError:
            log.warning("npu.lease_not_ours", key=key)


class Held:
    """A key we keep alive (a held slot, or a place in line) until released.

    `lost` is set when a heartbeat is refused: the key expired and was taken over.
    """

    def __init__(self, lease: NpuLease, key: str, rev: int, holder: Holder) -> None:
        self._lease = lease
        self.key = key
        self.rev = rev
        self.holder = holder
        self.lost = asyncio.Event()
        self._beat = asyncio.create_task(self._keep_alive())

    async def heartbeat(self) -> None:
        """Renew now (CAS on our revision); LeaseLost if the key is no longer ours."""
        kv = self._lease._kv
        assert kv is not None
        try:
            self.rev = await kv.update(self.key, _encode(self.holder), last=self.rev)
        except KeyWrongLastSequenceError:
            self.lost.set()
            log.error("npu.lease_lost", key=self.key)
            raise LeaseLost(self.key) from None

    async def _keep_alive(self) -> None:
        with contextlib.suppress(LeaseLost):
            while True:
                await asyncio.sleep(self._lease.ttl_s / 3)
                await self.heartbeat()

    async def release(self) -> None:
        self._beat.cancel()
        if not self.lost.is_set():
            await self._lease._delete(self.key, last=self.rev)


def lease_owner(service: str) -> str:
    return f"{service}@{default_board()}:{os.getpid()}"
