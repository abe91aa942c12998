"""The one worker runtime every NATS worker (llm, vision, rag) runs its jobs on.

accept -> wait for the accelerator's turn and the NPU lease -> stream the job's events to
the caller's inbox (numbered, see llm_wire.Delta.n) -> keepalive -> cancel -> watchdog -> drain.

A service decodes and checks a request itself (a refusal is its micro ServiceError), then
hands the runtime a Job: something with a request id, the caller's inbox, and an async
iterator of events. The runtime answers for everything after that:
- jobs run one at a time per worker, first come first served, each holding the NPU lease;
- while it holds a job, an Alive request every ALIVE_INTERVAL_S tells the caller it still
  does, and NATS's "no responders" tells the worker at once that the caller is gone (or, off
  the bus for BUS_LOST_AFTER_S, that nobody will hear it): the job is cancelled then;
- `<service>.cancel.<request_id>` cancels a job, even one whose cancel overtook it;
- `<service>.alive.<instance>` is answered while connected, so a caller can ask NATS
  whether this worker is still there (wire.Accepted.instance);
- a job that shows no progress for `stall_s` is aborted; one whose backend does not return
  from the abort within `abort_grace_s` is wedged: the process exits for its supervisor;
- on shutdown, jobs may finish within the grace; the rest end with Failed(unavailable).
"""

import asyncio
import contextlib
import os
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import Request, ServiceError
from prometheus_client import Counter, Histogram

from edge_common import bus, wire
from edge_common.npu_lease import LeaseLost, NpuLease, default_board, lease_owner
from edge_common.residency import CannotFit, Loadable, Residency, board_residency
from edge_common.settings import WorkerSettings

log = structlog.get_logger(__name__)

Outcome = Literal["completed", "cancelled", "failed"]
T = TypeVar("T")
M = TypeVar("M", bound=Loadable)
SHUTTING_DOWN = "The {service} service shut down before this request ended; try again."
STALLED = "The model made no progress for {stall_s:g} s; the request was aborted. Try again."
BUS_LOST_AFTER_S = 2 * wire.ALIVE_INTERVAL_S
"""Off the bus this long, a job has nobody to hear it (reconnects take well under)."""
WEDGED_EXIT_CODE = 70  # EX_SOFTWARE: the backend did not return from an abort
EARLY_CANCEL_TTL_S = 60.0
EARLY_CANCEL_MAX = 1024

LEASE_WAIT = Histogram(
    "edge_worker_lease_wait_seconds",
    "Wait for the accelerator's turn and the NPU lease",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
)
WATCHDOG = Counter(
    "edge_worker_watchdog",
    "Stalled jobs: aborted, or the worker exiting because the abort did not return",
    ["service", "action"],
)


class JobFailed(Exception):
    """A job ended without an answer for a reason it names with a wire error code (the
    caller maps the code), rather than by a crash."""

    def __init__(self, code: wire.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Job(Protocol):
    """One accepted request, as the runtime runs it."""

    request_id: str
    stream_to: str
    """The caller's inbox."""
    model: str
    """Named in the NPU lease."""
    stopped_by: str | None
    """Why the runtime stopped it early (stalled, caller_gone, bus_lost), if it did."""
    outcome: Outcome | None
    """How it ended, once it did (set by the runtime)."""
    final: type
    """The event that ends it successfully (llm_wire.Done for llm)."""

    def summary(self) -> dict[str, object]:
        """What the log events of its end carry (e.g. tokens generated so far)."""
        ...

    def last_progress(self) -> float:
        """When the job last showed progress (monotonic): what the watchdog reads."""
        ...

    def events(self) -> AsyncIterator[msgspec.Struct]:
        """The job's events, each a Struct with an `n` field the runtime numbers; the
        last one is a `final`."""
        ...


async def npu_lease(nc: Client, settings: WorkerSettings, service: str) -> NpuLease:
    """The board's NPU lease as `settings` configure it, started."""
    lease = NpuLease(
        nc,
        board=settings.board or default_board(),
        owner=lease_owner(service),
        slots=settings.npu_slots,
        ttl_s=settings.lease_ttl_s,
    )
    await lease.start()
    return lease


def servable(residency: Residency[M], model: str) -> M:
    """What serves `model`, refused as the micro error a worker answers with: unknown
    (model_not_found) or never fitting the board's memory (unavailable)."""
    served = residency.models.get(model)
    if served is None:
        raise ServiceError("model_not_found", f"The model `{model}` does not exist.")
    try:
        residency.check_fits(model)
    except CannotFit as exc:
        raise ServiceError("unavailable", str(exc)) from None
    return served


class OnBoard(NamedTuple, Generic[M]):
    nc: Client
    lease: NpuLease
    residency: Residency[M]


async def join_board(
    stack: AsyncExitStack, settings: WorkerSettings, service: str, models: dict[str, M], pinned: str
) -> OnBoard[M]:
    """What every worker starts with: its bus connection, the board's NPU lease, and a
    Residency of `models` in the board's memory ledger with `pinned` loaded (within the
    board's budget); each closed with `stack`."""
    nc = await stack.enter_async_context(
        bus.connect(settings.nats_url, service, settings.nats_password)
    )
    lease = await npu_lease(nc, settings, service)
    stack.push_async_callback(lease.stop)
    residency = await board_residency(stack, nc, settings, service, models, pinned)
    await residency.ensure(residency.pinned)
    return OnBoard(nc, lease, residency)


class Worker:
    def __init__(
        self,
        nc: Client,
        lease: NpuLease,
        *,
        service: str,
        noun: str,
        stall_s: float,
        abort_grace_s: float,
        prepare: Callable[[Job], Awaitable[None]],
        ended: Callable[[Job, Outcome], None],
    ) -> None:
        """`noun` names a job in log events (`llm.generation_started`); `prepare` runs in
        the job's turn before its events (a model switch occupies the NPU too); `ended` is
        told each job's outcome once, before its caller can see the end."""
        self._nc = nc
        self._lease = lease
        self._service, self._noun = service, noun
        self._stall_s, self._abort_grace_s = stall_s, abort_grace_s
        self._prepare, self._ended = prepare, ended
        self.turn = asyncio.Lock()
        """The accelerator runs one job at a time, FIFO (hold it to keep jobs off)."""
        self._active: dict[str, asyncio.Task[None]] = {}
        self._early_cancels: OrderedDict[str, float] = OrderedDict()
        self.current: Job | None = None
        self.queued = 0
        self.draining = False
        self.instance = nc.new_inbox().rsplit(".", 1)[1]
        """This worker's id, named in Accepted: it answers on wire.alive_subject()."""

    async def start(self, stack: AsyncExitStack, *, grace_s: float) -> None:
        """Listen for cancels and liveness questions; on the way out (the micro service
        stopped first), drain within `grace_s` (cancels still heard), then stop listening."""
        for subject, cb in (
            (wire.cancel_subject(self._service, "*"), self._on_cancel),
            (wire.alive_subject(self._service, self.instance), _answer),
        ):
            sub = await self._nc.subscribe(subject, cb=cb)
            stack.push_async_callback(sub.unsubscribe)
        stack.push_async_callback(self.drain, grace_s)

    def take(self, req: Request, decode: Callable[[bytes], T], what: str) -> T:
        """The request's message; a micro error when shutting down or when it does not
        decode (a service's own checks follow)."""
        if self.draining:
            raise ServiceError("unavailable", f"The {self._service} service is shutting down.")
        try:
            return decode(req.data)
        except msgspec.DecodeError as exc:
            raise ServiceError("invalid_request", f"invalid {what} request: {exc}") from exc

    def accepted(self, job: Job) -> bool:
        """Run `job` in its turn; False if its caller cancelled it already (it never runs)."""
        if self._early_cancels.pop(job.request_id, None) is not None:
            log.info(
                f"{self._service}.{self._noun}_cancelled",
                request_id=job.request_id,
                **job.summary(),
            )
            self._end(job, "cancelled")
            return False
        task = asyncio.create_task(self._run(job))
        self._active[job.request_id] = task
        task.add_done_callback(lambda _: self._active.pop(job.request_id, None))
        return True

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = wire.decode_cancel(msg.data).request_id
        if task := self._active.get(request_id):
            task.cancel()
            return
        now = time.monotonic()
        self._early_cancels[request_id] = now
        while self._early_cancels and (
            len(self._early_cancels) > EARLY_CANCEL_MAX
            or next(iter(self._early_cancels.values())) < now - EARLY_CANCEL_TTL_S
        ):
            self._early_cancels.popitem(last=False)

    async def _run(self, job: Job) -> None:
        structlog.contextvars.bind_contextvars(request_id=job.request_id)
        self.queued += 1
        queued_at = time.perf_counter()
        this = asyncio.current_task()
        assert this is not None
        alive = asyncio.create_task(self._keep_alive(job, this))
        watchdog: asyncio.Task[None] | None = None
        try:
            async with self.turn, self._lease.hold(job.model) as npu:
                LEASE_WAIT.labels(self._service).observe(time.perf_counter() - queued_at)
                self.queued -= 1
                self.current = job
                await self._prepare(job)
                watchdog = asyncio.create_task(self._watch(job, this))
                n = 0
                async for event in job.events():
                    n += 1
                    if npu.lost.is_set():
                        raise LeaseLost(npu.key)  # another job may own the NPU now: stop
                    if isinstance(event, job.final):
                        self._end(job, "completed")  # account before anyone sees the end
                    numbered = msgspec.structs.replace(event, n=n)  # type: ignore[type-var]
                    await self._nc.publish(job.stream_to, wire.encode(numbered))
        except asyncio.CancelledError:
            if self.current is not job:
                self.queued -= 1  # cancelled while waiting for its turn: it never ran
            stalled = job.stopped_by == "stalled"
            if stalled or self.draining:  # not the caller's doing: tell it now
                self._end(job, "failed")
                log.warning(
                    f"{self._service}.{self._noun}_stopped",
                    reason=job.stopped_by or "shutdown",
                    **job.summary(),
                )
                message = (
                    STALLED.format(stall_s=self._stall_s)
                    if stalled
                    else SHUTTING_DOWN.format(service=self._service)
                )
                await self._fail(job, wire.Failed(code="unavailable", message=message))
                return
            self._end(job, "cancelled")
            log.info(
                f"{self._service}.{self._noun}_cancelled",
                reason=job.stopped_by or "cancel",
                **job.summary(),
            )
        except JobFailed as exc:
            self._end(job, "failed")
            log.warning(f"{self._service}.{self._noun}_failed", code=exc.code, reason=str(exc))
            await self._fail(job, wire.Failed(code=exc.code, message=str(exc)))
        except Exception:
            self._end(job, "failed")
            log.exception(f"{self._service}.{self._noun}_failed")
            message = f"The {self._service} service failed on this request."
            await self._fail(job, wire.Failed(code="generation_failed", message=message))
        finally:
            alive.cancel()
            if watchdog is not None:
                watchdog.cancel()

    def _end(self, job: Job, outcome: Outcome) -> None:
        if job.outcome:
            return  # told once
        job.outcome = outcome
        if self.current is job:
            self.current = None
        self._ended(job, outcome)

    async def _fail(self, job: Job, failed: wire.Failed) -> None:
        await self._nc.publish(job.stream_to, wire.encode(failed))

    async def _keep_alive(self, job: Job, run: asyncio.Task[None]) -> None:
        """Tell the caller, every ALIVE_INTERVAL_S, that we still hold its request; as a
        request, so that NATS says at once when nobody listens any more (the caller died
        or lost the bus): then `run` is cancelled instead of working for nobody. So it is
        when we are off the bus for BUS_LOST_AFTER_S: the caller has given up on it by
        then, and the NPU is better free when the bus comes back."""
        alive = wire.encode(wire.Alive())
        down_since: float | None = None
        while True:
            await asyncio.sleep(wire.ALIVE_INTERVAL_S)
            if not self._nc.is_connected:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since >= BUS_LOST_AFTER_S:
                    log.warning(f"{self._service}.bus_lost", seconds=round(now - down_since, 1))
                    job.stopped_by = "bus_lost"
                    run.cancel()
                    return
                continue
            down_since = None
            try:
                await self._nc.request(job.stream_to, alive, timeout=wire.ALIVE_INTERVAL_S)
            except NoRespondersError:
                log.warning(f"{self._service}.caller_gone")
                job.stopped_by = "caller_gone"
                run.cancel()
                return
            except NatsTimeout:
                pass  # the caller is busy; it still listens

    async def _watch(self, job: Job, run: asyncio.Task[None]) -> None:
        """Abort `run` once its job showed no progress for stall_s; if the backend does not
        return from that abort within abort_grace_s, it is wedged (a runtime stuck in a
        library call cannot be freed from here): tell the caller and exit the process so
        that its supervisor starts a fresh one."""
        # a timer re-armed to the last progress (not a poll): no per-token cost in the job
        while (idle := time.monotonic() - job.last_progress()) < self._stall_s:  # noqa: ASYNC110
            await asyncio.sleep(self._stall_s - idle)
        log.warning(f"{self._service}.{self._noun}_stalled", stall_s=self._stall_s, **job.summary())
        WATCHDOG.labels(self._service, "abort").inc()
        job.stopped_by = "stalled"
        run.cancel()
        await asyncio.wait([run], timeout=self._abort_grace_s)
        if run.done():
            return
        WATCHDOG.labels(self._service, "exit").inc()
        log.error(
            f"{self._service}.watchdog_exit",
            abort_grace_s=self._abort_grace_s,
            code=WEDGED_EXIT_CODE,
        )
        failed = wire.Failed(code="unavailable", message=STALLED.format(stall_s=self._stall_s))
        with contextlib.suppress(Exception):  # best effort: we are going down regardless
            await self._fail(job, failed)
            await self._nc.flush(timeout=1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(WEDGED_EXIT_CODE)  # not SystemExit: the wedged thread would block shutdown

    async def drain(self, grace_s: float) -> None:
        """Shutting down (the micro service already stopped): what runs or waits may finish
        within `grace_s`; what is left then ends with Failed(unavailable)."""
        self.draining = True
        if tasks := list(self._active.values()):
            log.info(f"{self._service}.draining", jobs=len(tasks), grace_s=grace_s)
            _, left = await asyncio.wait(tasks, timeout=grace_s)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)


async def _answer(msg: Msg) -> None:
    await msg.respond(b"")
