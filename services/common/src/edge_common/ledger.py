"""The board's memory ledger: what each worker of a board holds, and asking them to free some.

One key per worker, in the NPU lease's bucket (edge_common.npu_lease), so with its TTL:

    mem.<board>.<worker>    Entry: what the worker holds (MB, of which pinned, per model)
                            and the subject it answers eviction requests on

A worker puts its entry whenever what it holds changes (before a load too: others plan with
it) and every TTL/3 as a heartbeat; it deletes it on the way out. A process that dies stops
renewing: its entry expires after the TTL and the bucket's expiry marker tells the watchers.
Every worker watches its board's entries, so what the others hold is known without asking.

Eviction, `memory.evict.<board>.<worker>` (request/reply, msgpack): FreeRequest(need_mb) ->
Freed(freed_mb, models, revision). The asked worker unloads unpinned models it is not using,
puts its entry, and answers with that entry's revision; the asker waits until its watch has
seen it, so that its budget counts the memory freed.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from edge_common.bus import on_reconnect
from edge_common.npu_lease import BUCKET, WATCH_RETRY_S, lease_owner

log = structlog.get_logger(__name__)
PREFIX: Final = "mem"
EVICT_PREFIX: Final = "memory.evict"
ASK_TIMEOUT_S: Final = 5.0
"""How long an asked worker may take to unload and answer (unloading takes milliseconds to
a second; a worker that does not answer is skipped)."""


class Holding(msgspec.Struct, frozen=True, kw_only=True):
    """Memory held by a worker (or, summed, by several)."""

    total_mb: int = 0
    pinned_mb: int = 0
    models: dict[str, int] = msgspec.field(default_factory=dict)
    """MB per model, a load under way included."""

    @property
    def unpinned_mb(self) -> int:
        return self.total_mb - self.pinned_mb


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    owner: str
    """`<service>@<host>:<pid>`, as in the NPU lease."""
    evict: str
    """Subject it answers FreeRequests on."""
    holding: Holding
    at: float
    """Unix time of the put."""


class FreeRequest(msgspec.Struct, frozen=True, kw_only=True):
    need_mb: int
    by: str


class Freed(msgspec.Struct, frozen=True, kw_only=True):
    freed_mb: int
    models: list[str]
    revision: int
    """The revision of the answering worker's entry that shows the memory freed."""


_entry = msgspec.json.Decoder(Entry)
_encode_json = msgspec.json.Encoder().encode
_free_request = msgspec.msgpack.Decoder(FreeRequest)
_freed = msgspec.msgpack.Decoder(Freed)


class BoardLedger:
    """This worker's entry in the board's ledger, and its view of the others' entries."""

    def __init__(
        self, nc: Client, *, board: str, service: str, ttl_s: float, bucket: str = BUCKET
    ) -> None:
        if board == PREFIX:
            raise ValueError(f"a board may not be named {PREFIX!r} (the ledger's key prefix)")
        self._nc = nc
        self.board = board
        self.owner = lease_owner(service)
        worker = nc.new_inbox().rsplit(".", 1)[1]
        self.key = f"{PREFIX}.{board}.{worker}"
        self.evict_subject = f"{EVICT_PREFIX}.{board}.{worker}"
        self.ttl_s = ttl_s
        self._bucket = bucket
        self._kv: KeyValue | None = None
        self._entries: dict[str, Entry] = {}
        self._seen = 0  # highest revision the watch delivered
        self._changed = asyncio.Condition()
        self._poked = asyncio.Event()
        self._putting = asyncio.Lock()
        self._holding: Callable[[], Holding] = Holding
        self._free: Callable[[int], list[str]] = lambda _: []
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: KeyValue.KeyWatcher | None = None
        self._sub: Subscription | None = None

    async def start(self, holding: Callable[[], Holding], free: Callable[[int], list[str]]) -> None:
        """Put our entry (`holding()` says what we hold), follow the board's, and answer
        eviction requests with `free(need_mb)` (the models it unloaded). The NPU lease must
        have started: it makes the bucket and owns its TTL."""
        self._holding, self._free = holding, free
        self._kv = await self._nc.jetstream().key_value(self._bucket)
        await self.publish()
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow(ready)),
            asyncio.create_task(self._heartbeat()),
        ]
        on_reconnect(self._nc, self._rewatch)
        self._sub = await self._nc.subscribe(self.evict_subject, cb=self._on_evict)
        await ready.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # no put after the delete
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        await self._rewatch()
        if self._kv is not None:  # free our share at once rather than after the TTL
            try:
                await self._kv.delete(self.key)
            except nats.errors.Error as exc:
                log.warning("memory.ledger_delete_failed", key=self.key, error=repr(exc))

    def others(self) -> Holding:
        """What the board's other workers hold, summed (models named `<owner>/<model>`)."""
        entries = [e for key, e in self._entries.items() if key != self.key]
        return Holding(
            total_mb=sum(e.holding.total_mb for e in entries),
            pinned_mb=sum(e.holding.pinned_mb for e in entries),
            models={f"{e.owner}/{m}": mb for e in entries for m, mb in e.holding.models.items()},
        )

    async def wait_until(self, check: Callable[[Holding], bool]) -> Holding:
        """What the others hold, once the watch has shown it satisfy `check`."""
        async with self._changed:
            await self._changed.wait_for(lambda: check(self.others()))
            return self.others()

    def poke(self) -> None:
        """What we hold changed: put our entry soon."""
        self._poked.set()

    async def publish(self) -> int:
        """Put our entry now; its revision."""
        kv = self._kv
        assert kv is not None, "start() first"
        async with self._putting:  # a put never overtakes a newer one
            entry = Entry(
                owner=self.owner, evict=self.evict_subject, holding=self._holding(), at=time.time()
            )
            return await kv.put(self.key, _encode_json(entry))

    async def claim(self) -> None:
        """Put our entry before taking memory; with the bus away, load all the same (the
        heartbeat puts it once the bus is back)."""
        try:
            async with asyncio.timeout(self.ttl_s / 3):
                await self.publish()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("memory.ledger_put_failed", key=self.key, error=repr(exc))

    async def ask_to_free(self, need_mb: int) -> int:
        """Ask the other workers, most unpinned memory first, to free `need_mb` between them;
        what they freed (MB), once our view shows it."""
        freed_mb = 0
        asked = sorted(
            (e for key, e in self._entries.items() if key != self.key and e.holding.unpinned_mb),
            key=lambda e: -e.holding.unpinned_mb,
        )
        for entry in asked:
            if freed_mb >= need_mb:
                break
            request = FreeRequest(need_mb=need_mb - freed_mb, by=self.owner)
            try:
                reply = await self._nc.request(
                    entry.evict, msgspec.msgpack.encode(request), timeout=ASK_TIMEOUT_S
                )
                freed = _freed.decode(reply.data)
            except (nats.errors.Error, msgspec.DecodeError) as exc:
                log.warning("memory.ask_failed", owner=entry.owner, error=repr(exc))
                continue
            log.info(
                "memory.freed_by_other", owner=entry.owner, models=freed.models, mb=freed.freed_mb
            )
            freed_mb += freed.freed_mb
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ASK_TIMEOUT_S), self._changed:
                    await self._changed.wait_for(lambda r=freed.revision: self._seen >= r)
        return freed_mb

    async def _on_evict(self, msg: Msg) -> None:
        request = _free_request.decode(msg.data)
        before = self._holding().total_mb
        models = self._free(request.need_mb)
        revision = await self.publish()
        freed = Freed(freed_mb=before - self._holding().total_mb, models=models, revision=revision)
        log.info("memory.freed_for_other", by=request.by, models=models, mb=freed.freed_mb)
        await msg.respond(msgspec.msgpack.encode(freed))

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.ttl_s / 3)
            self._poked.clear()
            await self.claim()  # the bus away: the next beat tries again

    async def _rewatch(self) -> None:
        """End the watch: _follow watches anew (after a reconnect the old one is dead)."""
        if (watcher := self._watcher) is not None:
            self._watcher = None
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()

    async def _follow(self, ready: asyncio.Event) -> None:
        """Keep the view of the board's entries; a broken or ended watch is started anew
        and its initial values replace the view (entries may have expired meanwhile)."""
        kv = self._kv
        assert kv is not None
        while True:
            try:
                self._watcher = await kv.watch(f"{PREFIX}.{self.board}.*")
                initial: dict[str, Entry] | None = {}
                async for update in self._watcher:  # None ends the initial values
                    async with self._changed:
                        if update is None:
                            self._entries, initial = initial or {}, None
                            ready.set()
                        else:
                            self._apply(initial if initial is not None else self._entries, update)
                            self._seen = max(self._seen, update.revision)
                        self._changed.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("memory.ledger_watch_failed", board=self.board)
                await asyncio.sleep(WATCH_RETRY_S)

    @staticmethod
    def _apply(entries: dict[str, Entry], update: KeyValue.Entry) -> None:
        if update.operation in ("DEL", "PURGE") or not update.value:  # or expired
            entries.pop(update.key, None)
        else:
            entries[update.key] = _entry.decode(update.value)
