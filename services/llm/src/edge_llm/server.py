"""The llm service on NATS: accepts chat requests, generates one at a time, streams events.

A request is answered at once (Accepted, or an error the client caused) and generation runs
in its own task, so that queued requests are acknowledged while another one generates.
Cancel messages may overtake the request they cancel: those are remembered for a while.
"""

import asyncio
import contextlib
import os
import sys
import time
from collections import OrderedDict

import msgspec
import structlog
from edge_common import wire
from edge_common.npu_lease import LeaseLost, NpuLease
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import Request, ServiceError

from edge_llm import metrics
from edge_llm.backends import Backend
from edge_llm.generation import Generation
from edge_llm.residency import CannotFit, Residency

log = structlog.get_logger(__name__)

SHUTTING_DOWN = "The llm service shut down before this generation ended; try again."
STALLED = "The model produced no token for {stall_s:g} s; the generation was aborted. Try again."
BUS_LOST_AFTER_S = 2 * wire.ALIVE_INTERVAL_S
"""Off the bus this long, a generation has nobody to hear it (reconnects take well under)."""
WEDGED_EXIT_CODE = 70  # EX_SOFTWARE: the backend did not return from an abort
EARLY_CANCEL_TTL_S = 60.0
EARLY_CANCEL_MAX = 1024


class Stats(msgspec.Struct, kw_only=True):
    queued: int
    busy: bool
    completed: int
    cancelled: int
    failed: int
    generated_tokens: int
    """Tokens generated since start, including those of the generation running now."""


class LlmServer:
    def __init__(
        self,
        nc: Client,
        residency: Residency,
        lease: NpuLease,
        *,
        stall_s: float,
        abort_grace_s: float,
    ) -> None:
        self._nc = nc
        self._stall_s = stall_s
        self._abort_grace_s = abort_grace_s
        self.residency = residency
        self._lease = lease
        self._gpu = asyncio.Lock()  # the accelerator runs one generation at a time, FIFO
        self._active: dict[str, asyncio.Task[None]] = {}
        self._early_cancels: OrderedDict[str, float] = OrderedDict()
        self._current: Generation | None = None
        self._queued = 0
        self._ended = {"completed": 0, "cancelled": 0, "failed": 0}
        self._ended_tokens = 0
        self._draining = False
        self.instance = nc.new_inbox().rsplit(".", 1)[1]
        """This worker's id, named in Accepted: it answers on wire.alive_subject(instance)."""

    def stats(self) -> Stats:
        current = self._current
        return Stats(
            queued=self._queued,
            busy=current is not None,
            generated_tokens=self._ended_tokens + (current.completion_tokens if current else 0),
            **self._ended,
        )

    async def on_chat(self, req: Request) -> None:
        if self._draining:
            raise ServiceError("unavailable", "The llm service is shutting down.")
        try:
            request = wire.decode_request(req.data)
        except msgspec.DecodeError as exc:
            raise ServiceError("invalid_request", f"invalid chat request: {exc}") from exc
        backend = self.residency.backends.get(request.model)
        if backend is None:
            raise ServiceError("model_not_found", f"The model `{request.model}` does not exist.")
        try:
            self.residency.check_fits(request.model)
        except CannotFit as exc:
            raise ServiceError("unavailable", str(exc)) from None
        prompt = backend.prompt_tokens(request.messages)
        limit = backend.card.context_length
        wanted = len(prompt) + (request.max_tokens or 1)
        if wanted > limit:
            detail = (
                f"you requested {wanted} tokens ({len(prompt)} in the messages, "
                f"{request.max_tokens} in the completion)"
                if request.max_tokens
                else f"your messages resulted in {len(prompt)} tokens"
            )
            raise ServiceError(
                "context_length_exceeded",
                f"This model's maximum context length is {limit} tokens. However, {detail}. "
                "Please reduce the length of the messages or completion.",
            )
        if self._early_cancels.pop(request.request_id, None) is not None:
            # the caller gave up before we saw the request: nobody listens, nothing to run
            self._ended["cancelled"] += 1
            log.info("llm.generation_cancelled", request_id=request.request_id, completion_tokens=0)
        else:
            task = asyncio.create_task(self._run(request, backend, prompt))
            self._active[request.request_id] = task
            task.add_done_callback(lambda _: self._active.pop(request.request_id, None))
        accepted = wire.Accepted(prompt_tokens=len(prompt), instance=self.instance)
        await req.respond(wire.encode(accepted))

    async def on_cancel(self, msg: Msg) -> None:
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

    async def _run(self, request: wire.ChatRequest, backend: Backend, prompt: list[int]) -> None:
        structlog.contextvars.bind_contextvars(request_id=request.request_id)
        generation = Generation(backend, request, prompt)
        self._queued += 1
        queued_at = time.perf_counter()
        this = asyncio.current_task()
        assert this is not None
        alive = asyncio.create_task(self._keep_alive(request.stream_to, this, generation))
        watchdog: asyncio.Task[None] | None = None
        try:
            async with self._gpu, self._lease.hold(request.model) as npu:
                metrics.LEASE_WAIT.observe(time.perf_counter() - queued_at)
                self._queued -= 1
                self._current = generation
                loads = self.residency.loads
                switching = time.perf_counter()
                await self.residency.ensure(request.model)  # a switch occupies the NPU too
                if self.residency.loads > loads:
                    metrics.SWITCH.observe(time.perf_counter() - switching)
                started = time.perf_counter()
                log.info("llm.generation_started", model=request.model, prompt_tokens=len(prompt))
                watchdog = asyncio.create_task(self._watch(generation, request.stream_to, this))
                n = 0
                async for event in generation.events():
                    n += 1
                    if npu.lost.is_set():
                        raise LeaseLost(npu.key)  # another job may own the NPU now: stop
                    if isinstance(event, wire.Done):
                        # account before anyone can see the end
                        self._finish(generation, "completed")
                        log.info(
                            "llm.generation_finished",
                            completion_tokens=generation.completion_tokens,
                            seconds=round(time.perf_counter() - started, 3),
                        )
                    numbered = msgspec.structs.replace(event, n=n)  # see wire.Delta.n
                    await self._nc.publish(request.stream_to, wire.encode(numbered))
        except asyncio.CancelledError:
            if self._current is not generation:
                self._queued -= 1  # cancelled while waiting for its turn: it never ran
            stalled = generation.stopped_by == "stalled"
            if stalled or self._draining:  # not the caller's doing: tell it now
                self._finish(generation, "failed")
                log.warning("llm.generation_stopped", reason="stalled" if stalled else "shutdown")
                message = STALLED.format(stall_s=self._stall_s) if stalled else SHUTTING_DOWN
                stopped = wire.Failed(code="unavailable", message=message)
                await self._nc.publish(request.stream_to, wire.encode(stopped))
                return
            self._finish(generation, "cancelled")
            log.info(
                "llm.generation_cancelled",
                reason=generation.stopped_by or "cancel",
                completion_tokens=generation.completion_tokens,
            )
        except Exception:
            self._finish(generation, "failed")
            log.exception("llm.generation_failed")
            failed = wire.Failed(code="generation_failed", message="The model failed to generate.")
            await self._nc.publish(request.stream_to, wire.encode(failed))
        finally:
            alive.cancel()
            if watchdog is not None:
                watchdog.cancel()

    async def _keep_alive(
        self, stream_to: str, run: asyncio.Task[None], generation: Generation
    ) -> None:
        """Tell the router, every ALIVE_INTERVAL_S, that we still hold its request; as a
        request, so that NATS says at once when nobody listens any more (the router died
        or lost the bus): then `run` is cancelled instead of generating for nobody. So it
        is when we are off the bus for BUS_LOST_AFTER_S: the router has given up on it by
        then, and the NPU is better free when the bus comes back."""
        alive = wire.encode(wire.Alive())
        down_since: float | None = None
        while True:
            await asyncio.sleep(wire.ALIVE_INTERVAL_S)
            if not self._nc.is_connected:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since >= BUS_LOST_AFTER_S:
                    log.warning("llm.bus_lost", seconds=round(now - down_since, 1))
                    generation.stopped_by = "bus_lost"
                    run.cancel()
                    return
                continue
            down_since = None
            try:
                await self._nc.request(stream_to, alive, timeout=wire.ALIVE_INTERVAL_S)
            except NoRespondersError:
                log.warning("llm.caller_gone")
                generation.stopped_by = "caller_gone"
                run.cancel()
                return
            except NatsTimeout:
                pass  # the router is busy; it still listens

    async def _watch(self, generation: Generation, stream_to: str, run: asyncio.Task[None]) -> None:
        """Abort `run` once its backend produced nothing for stall_s; if the backend does not
        return from that abort within abort_grace_s, it is wedged (a runtime stuck in a
        library call cannot be freed from here): tell the caller and exit the process so
        that its supervisor starts a fresh one."""
        # a timer re-armed to the last token (not a poll): no per-token cost in the generation
        while (idle := time.monotonic() - generation.last_progress()) < self._stall_s:  # noqa: ASYNC110
            await asyncio.sleep(self._stall_s - idle)
        log.warning(
            "llm.generation_stalled",
            stall_s=self._stall_s,
            completion_tokens=generation.completion_tokens,
        )
        metrics.WATCHDOG.labels("abort").inc()
        generation.stopped_by = "stalled"
        run.cancel()
        await asyncio.wait([run], timeout=self._abort_grace_s)
        if run.done():
            return
        metrics.WATCHDOG.labels("exit").inc()
        log.error("llm.watchdog_exit", abort_grace_s=self._abort_grace_s, code=WEDGED_EXIT_CODE)
        failed = wire.Failed(code="unavailable", message=STALLED.format(stall_s=self._stall_s))
        with contextlib.suppress(Exception):  # best effort: we are going down regardless
            await self._nc.publish(stream_to, wire.encode(failed))
            await self._nc.flush(timeout=1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(WEDGED_EXIT_CODE)  # not SystemExit: the wedged thread would block shutdown

    async def drain(self, grace_s: float) -> None:
        """Shutting down (the micro service already stopped): what runs or waits may finish
        within `grace_s`; what is left then ends with Failed(unavailable)."""
        self._draining = True
        if tasks := list(self._active.values()):
            log.info("llm.draining", generations=len(tasks), grace_s=grace_s)
            _, left = await asyncio.wait(tasks, timeout=grace_s)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def _finish(self, generation: Generation, outcome: str) -> None:
        if generation.outcome:
            return
        generation.outcome = outcome
        metrics.GENERATIONS.labels(generation.model, outcome).inc()
        metrics.TOKENS.labels(generation.model).inc(generation.completion_tokens)
        if self._current is generation:
            self._current = None
        self._ended[outcome] += 1
        self._ended_tokens += generation.completion_tokens

    async def unload_idle(self, keep_alive_s: float) -> None:
        async with self._gpu:  # never under a running generation
            self.residency.unload_idle(keep_alive_s)

    def micro_stats(self, _: object) -> dict[str, object]:
        """What the router reads from this instance's STATS (per endpoint `data`): asked
        every discovery round, so no I/O here."""
        return {
            "resident": self.residency.resident(),
            "switch_s": round(self.residency.switch_s, 3),
        }
