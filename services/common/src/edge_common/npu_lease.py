"""The NPU lease: at most `slots` jobs on a board's NPU at once, across processes.

JetStream KV bucket (history 1, TTL = lease TTL, with limit markers so that an expiry is
seen by watchers). Keys per board:

    <board>.lease.<slot>    the holder of a slot: created/CAS-updated by it, deleted on release
    <board>.wait.<ticket>   a waiter's place in line: its first revision orders the queue

Acquire = queue a ticket, then, when among the first `free slots` tickets, take a free slot
by CAS on its last revision. Heartbeat = CAS update (a stale holder is refused and learns it
lost the lease). Release = CAS delete. A crashed holder stops heartbeating: its key expires
after the TTL and the expiry marker wakes the waiters. Everything waits on the key watcher.

The watcher's revisions are only a hint for a CAS: a tombstone ages out into a limit marker,
and that marker expires in turn with no watcher event, so a take refused on the watched
revision re-reads the key's real last revision from the server. The bus may go away
(timeouts, reconnects, a nats-server restart): heartbeats keep trying, the watch is
restarted on every reconnect, and the bucket (in the JetStream store) outlives the server.
"""

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from edge_common.bus import on_reconnect

log = structlog.get_logger(__name__)
BUCKET: Final = "npu"
STREAM_CONFIG_DIFFERS: Final = 10058
"""JetStream's err_code for "stream name already in use with a different configuration"."""
WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's err_code for a write whose expected last sequence is not the subject's."""
WATCH_RETRY_S: Final = 0.25
"""Pause before re-watching after a failed watch (e.g. JetStream still starting up)."""


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

    async def replace(self, entries: list[KeyValue.Entry]) -> None:
        """Start over from a new watch's initial values (keys may have vanished meanwhile)."""
        async with self.changed:
            self.live.clear()
            self.tombstones.clear()
            for entry in entries:
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
        """What a CAS on `key` should name: its live or tombstone revision, 0 if never seen."""
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
        self._watcher: KeyValue.KeyWatcher | None = None
        self._background: set[asyncio.Future[None]] = set()

    @property
    def _stream(self) -> str:
        return f"KV_{self._bucket}"

    async def start(self) -> None:
        js = self._nc.jetstream()
        config = KeyValueConfig(
            bucket=self._bucket, history=1, ttl=self.ttl_s, limit_marker_ttl=max(1.0, self.ttl_s)
        )
        try:
            self._kv = await js.create_key_value(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_CONFIG_DIFFERS:
                raise
            await self._retune(js, config)
            # Opened as it is now: another service of the board may have retuned it since
            # (the lease TTL is the board's: configure it once, EDGE_LEASE_TTL_S).
            self._kv = await js.key_value(self._bucket)
        self._follow_reconnects()
        ready = asyncio.Event()
        self._watch_task = asyncio.create_task(self._follow(ready))
        await ready.wait()

    async def _retune(self, js: JetStreamContext, config: KeyValueConfig) -> None:
        """The bucket exists with other settings (the lease TTL was changed): give its stream
        the TTLs of `config`, as create_key_value would have set them, keeping its data."""
        stream = (await js.stream_info(self._stream)).config
        log.info("npu.lease_ttl_changed", bucket=self._bucket, old=stream.max_age, new=config.ttl)
        await js.update_stream(
            stream.evolve(
                max_age=config.ttl,
                duplicate_window=min(stream.duplicate_window or config.ttl, config.ttl),
                subject_delete_marker_ttl=config.limit_marker_ttl,
            )
        )

    def _follow_reconnects(self) -> None:
        """End the watch whenever the connection comes back, so that _follow watches anew.

        After a nats-server restart the watch's consumer is gone, and nats-py's ordered
        consumer only notices after two missed idle heartbeats (about 20 s), while waiters
        need the view now."""

        async def reconnected() -> None:
            if self._watcher is not None:
                self._spawn(self._end_watch(self._watcher))

        on_reconnect(self._nc, reconnected)

    @staticmethod
    async def _end_watch(watcher: KeyValue.KeyWatcher) -> None:
        with contextlib.suppress(nats.errors.Error):
            await watcher.stop()

    async def _follow(self, ready: asyncio.Event) -> None:
        """Keep the view in step with the bucket; a broken or ended watch is started anew,
        and its initial values replace the view (keys may have vanished meanwhile)."""
        kv = self._kv
        assert kv is not None
        while True:
            try:
                self._watcher = await kv.watch(f"{self.board}.>")
                initial: list[KeyValue.Entry] | None = []
                async for entry in self._watcher:  # None marks the end of the initial values
                    if entry is None:
                        await self._view.replace(initial or [])
                        initial = None
                        ready.set()
                    elif initial is not None:
                        initial.append(entry)
                    else:
                        await self._view.apply(entry)
                log.info("npu.lease_rewatch", board=self.board)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("npu.lease_watch_failed", board=self.board)
                await asyncio.sleep(WATCH_RETRY_S)  # e.g. JetStream still starting: not a spin

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
        if self._watcher is not None:
            await self._end_watch(self._watcher)
            self._watcher = None

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
        """CAS the slot's key to us; None if it is held (then the watcher will show it)."""
        if held := await self._take_at(key, holder, self._view.last_revision(key)):
            return held
        # The watched revision may be gone from the server (an expired limit marker leaves
        # no trace in the watch): take the slot at its real last revision, if it is free.
        last = await self._free_revision(key)
        return None if last is None else await self._take_at(key, holder, last)

    async def _take_at(self, key: str, holder: Holder, last: int) -> "Held | None":
        kv = self._kv
        assert kv is not None
        try:
            rev = await self._claim(key, kv.update(key, _encode(holder), last=last))
        except KeyWrongLastSequenceError:
            return None
        return Held(self, key, rev, holder)

    async def _free_revision(self, key: str) -> int | None:
        """The server's last revision of `key` if the key is free (0 when it has none, or
        that of its tombstone or expiry marker), None if someone holds it."""
        rev, value = await self._last(key)
        return rev if value is None else None

    async def _last(self, key: str) -> tuple[int, bytes | None]:
        """The server's last revision of `key` (0 if it has none) and its value: None when
        that revision is a tombstone or an expiry marker."""
        js = self._nc.jetstream()
        try:
            msg = await js.get_msg(self._stream, subject=f"$KV.{self._bucket}.{key}")
        except NotFoundError:
            return 0, None
        assert msg.seq is not None
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
            return msg.seq, None
        return msg.seq, msg.data or b""

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

    async def _delete(self, key: str, last: int, ours: bytes | None = None) -> None:
        """Delete `key` at revision `last`; if it moved on but still holds `ours` (a renewal
        landed whose answer we never heard), at the revision it moved to."""
        try:
            if await self._delete_at(key, last):
                return
            rev, current = await self._last(key)
            if ours is not None and current == ours and await self._delete_at(key, rev):
                return
            log.warning("npu.lease_not_ours", key=key)
        except nats.errors.Error as exc:  # the bus is away: the TTL frees the key instead
            log.warning("npu.lease_release_failed", key=key, error=repr(exc))

    async def _delete_at(self, key: str, last: int) -> bool:
        """Delete `key` if `last` is its last revision; False if it is not."""
        kv = self._kv
        assert kv is not None
        try:
            await kv.delete(key, last=last)
        except BadRequestError as exc:  # kv.delete does not raise KeyWrongLastSequenceError
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            return False
        return True


class Held:
    """A key we keep alive (a held slot, or a place in line) until released.

    `lost` is set when the server says the key is no longer ours (it expired, maybe was
    taken over); a heartbeat that fails for any other reason (the bus is away) is retried.
    """

    def __init__(self, lease: NpuLease, key: str, rev: int, holder: Holder) -> None:
        self._lease = lease
        self.key = key
        self.rev = rev
        self.holder = holder
        self.lost = asyncio.Event()
        self._released = False
        self._beat = asyncio.create_task(self._keep_alive())

    async def heartbeat(self) -> None:
        """Renew now (CAS on our revision); LeaseLost if the key is no longer ours, a
        nats.errors.Error if the bus did not answer."""
        kv = self._lease._kv
        assert kv is not None
        value = _encode(self.holder)
        try:
            self.rev = await kv.update(self.key, value, last=self.rev)
            return
        except KeyWrongLastSequenceError:
            pass
        # a renewal whose answer was lost (a timeout, a reconnect) may have landed all the
        # same: then the key still holds our value, at a revision we did not hear of
        rev, current = await self._lease._last(self.key)
        if current == value:
            with contextlib.suppress(KeyWrongLastSequenceError):
                self.rev = await kv.update(self.key, value, last=rev)
                return
        self.lost.set()
        log.error("npu.lease_lost", key=self.key)
        raise LeaseLost(self.key)

    async def _keep_alive(self) -> None:
        with contextlib.suppress(LeaseLost):
            # checked too, not only cancelled: Python 3.11's wait_for (under nats-py's
            # requests) can swallow a cancel, and this loop would then renew for ever
            while True:
                await asyncio.sleep(self._lease.ttl_s / 3)
                if self._released:
                    return
                try:
                    # a renewal answered later than the next one is due is of no use
                    async with asyncio.timeout(self._lease.ttl_s / 3):
                        await self.heartbeat()
                except (nats.errors.Error, TimeoutError) as exc:  # not a refusal: keep trying
                    log.warning("npu.lease_heartbeat_failed", key=self.key, error=repr(exc))

    async def release(self) -> None:
        # a renewal cut off here may still land: the delete then finds our value at a newer
        # revision (waiting out the TTL instead kept the next job off the NPU for seconds)
        self._released = True
        self._beat.cancel()
        await asyncio.wait([self._beat], timeout=self._lease.ttl_s)
        if not self.lost.is_set():
            await self._lease._delete(self.key, last=self.rev, ours=_encode(self.holder))


def lease_owner(service: str) -> str:
    return f"{service}@{default_board()}:{os.getpid()}"
