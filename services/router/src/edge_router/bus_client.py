"""The router's side of a worker protocol (edge_common.wire), for any worker service.

`BusClient.stream` listens on a fresh inbox, asks a subject (a queue group of the workers
serving it: one takes it), and yields the worker's events; `BusClient.call` is for requests
answered in the reply itself (an embedding, a search). If the consumer stops early
(client gone, error), the worker is told to cancel on `<service>.cancel.<request_id>`.
Transport failures become ApiErrors here and nowhere else. A service's client (llm_client)
names its subjects, its event decoder and its refusals; everything else is here.

While the router's own bus connection is down nothing is sent; how a stream notices a dead
worker or a lost bus is liveness.py's part.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

import msgspec
import structlog
from edge_common import wire
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    MaxPayloadError,
    NoRespondersError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from edge_router.errors import ApiError, NoWorker, from_wire, model_not_found, unavailable
from edge_router.liveness import BUS_DOWN, GONE, Liveness

log = structlog.get_logger(__name__)
EVENTS_LOST = "Part of the answer was lost on the message bus; try again."
MAX_SUBJECT = 1024
"""Longest subject asked: a model id makes part of it, and NATS drops a connection whose
command line is too long (4 KB) for good: a 5000-character model name cut the router off."""


class Numbered(Protocol):
    """An answer event: numbered 1, 2, 3... per request, or 0 when not numbered (llm.Delta.n)."""

    @property
    def n(self) -> int: ...


class Identified(Protocol):
    """A request message (a wire Struct)."""

    @property
    def request_id(self) -> str: ...


class Submission(Identified, Protocol):
    """A request message that can be streamed: see llm_wire.ChatRequest."""

    @property
    def stream_to(self) -> str:
        """The inbox for its events; `stream` fills it in."""
        ...


E = TypeVar("E", bound=Numbered)
T = TypeVar("T")


class BusClient(Generic[E]):
    """Requests to the workers of one micro service (`llm`, `vision`...), whose answers are
    `E` events (`final` ones end a request) besides wire.Failed and wire.Alive."""

    def __init__(
        self,
        nc: Client,
        service: str,
        *,
        decode: Callable[[bytes], E | wire.Failed | wire.Alive],
        final: tuple[type[E], ...],
        too_large: Callable[[], ApiError],
        accept_timeout: float,
        idle_timeout: float,
        invalid_param: str | None = None,
    ) -> None:
        self._nc = nc
        self._service = service
        self._decode = decode
        self._final = final
        self._too_large = too_large
        """The error when a request exceeds the bus's payload limit."""
        self._accept_timeout = accept_timeout
        self._invalid_param = invalid_param
        """The request field a worker's invalid_request refusal is about (None: unknown)."""
        self._liveness = Liveness(nc, service, idle_timeout=idle_timeout)
        self._streams: set[Subscription] = set()

    async def aclose(self) -> None:
        """Stop listening to the streams still open (shutting down), so that the bus drains
        at once instead of waiting for events nobody will read."""
        for sub in list(self._streams):
            await self._drop(sub)

    async def _drop(self, sub: Subscription) -> None:
        self._streams.discard(sub)
        with contextlib.suppress(BadSubscriptionError, ConnectionClosedError):
            await sub.unsubscribe()

    async def stream(
        self, subject: str, request: Submission, *, serving: str
    ) -> AsyncGenerator[E, None]:
        """Submit `request` on `subject` (its `stream_to` is replaced); raise ApiError if it
        is refused. `serving` names what the subject serves, for the error when no worker
        does."""
        if not self._nc.is_connected:
            raise unavailable(BUS_DOWN)
        sub = await self._nc.subscribe(self._nc.new_inbox())
        self._streams.add(sub)
        request = msgspec.structs.replace(request, stream_to=sub.subject)
        try:
            reply = await self._ask(subject, request, serving, self._accept_timeout)
        except ApiError:
            await self._drop(sub)
            raise
        # a worker that answers otherwise is not one of ours
        accepted = wire.decode_accepted(reply.data)
        return self._events(request.request_id, sub, accepted.instance, self._liveness.disconnects)

    async def call(
        self,
        subject: str,
        request: Identified,
        decode: Callable[[bytes], T],
        *,
        serving: str,
        within_s: float,
    ) -> T:
        """Ask `subject` and return the decoded reply; raise ApiError if it is refused or
        not answered within `within_s` (then the worker is told to cancel)."""
        if not self._nc.is_connected:
            raise unavailable(BUS_DOWN)
        return decode((await self._ask(subject, request, serving, within_s)).data)

    async def _ask(self, subject: str, request: Submission, serving: str, within_s: float) -> Msg:
        """The worker's reply to `request`; transport failures and refusals as ApiErrors."""
        if len(subject) > MAX_SUBJECT or subject.endswith("."):  # no such model is served
            raise model_not_found(serving)
        try:
            reply = await self._nc.request(
                subject,
                wire.encode(request),
                timeout=within_s,
                headers={wire.REQUEST_ID_HEADER: request.request_id},
            )
        except NoRespondersError:
            raise unavailable(
                f"No {self._service} service serving `{serving}` is running; try again shortly.",
                kind=NoWorker,
            ) from None
        except MaxPayloadError:
            raise self._too_large() from None
        except GONE:
            raise unavailable(BUS_DOWN) from None
        except NatsTimeout:
            # the request may still be queued on a worker that is slow to answer
            await self._cancel(request.request_id)
            raise unavailable(f"The {self._service} service did not answer in time.") from None
        if reply.headers and ERROR_CODE_HEADER in reply.headers:
            raise from_wire(
                reply.headers[ERROR_CODE_HEADER],
                reply.headers.get(ERROR_HEADER, ""),
                request.request_id,
                self._invalid_param,
            )
        return reply

    async def _events(
        self, request_id: str, sub: Subscription, instance: str, disconnects: int
    ) -> AsyncGenerator[E, None]:
        finished = False
        expected = 1
        try:
            while True:
                msg = await self._liveness.next(sub, instance, disconnects)
                event = self._decode(msg.data)
                if isinstance(event, wire.Alive):
                    await msg.respond(b"")  # we still listen
                    continue
                if isinstance(event, wire.Failed):
                    finished = True
                    raise from_wire(event.code, event.message, request_id, self._invalid_param)
                if event.n and event.n != expected:  # see llm_wire.Delta.n
                    log.warning("router.events_lost", expected=expected, got=event.n)
                    raise unavailable(EVENTS_LOST)
                expected += 1
                # finished before the consumer sees it: one that stops reading at the final
                # event (it has what it wanted) must not cancel a request that has ended
                finished = isinstance(event, self._final)
                yield event
                if finished:
                    return
        finally:
            # shielded: this runs when the HTTP client went away and our task is cancelled
            await asyncio.shield(self._close(request_id, sub, finished))

    async def _close(self, request_id: str, sub: Subscription, finished: bool) -> None:
        if not finished:
            # the bus may be gone: the worker then notices by its keepalives
            with contextlib.suppress(*GONE):
                await self._cancel(request_id)
        await self._drop(sub)

    async def _cancel(self, request_id: str) -> None:
        log.info("router.cancel_sent", request_id=request_id)
        await self._nc.publish(
            wire.cancel_subject(self._service, request_id),
            wire.encode(wire.Cancel(request_id=request_id)),
        )
        # No flush: nats-py's flusher sends it at once, and a flush that times out (a stalled
        # server) leaves a cancelled future behind whose late PONG kills the read loop for good.

    async def stats(self, window: float) -> AsyncGenerator[bytes, None]:
        """The micro STATS replies of the running instances: scatter, gather for `window` s."""
        sub = await self._nc.subscribe(self._nc.new_inbox())
        try:
            await self._nc.publish(f"$SRV.STATS.{self._service}", b"", reply=sub.subject)
            deadline = asyncio.get_running_loop().time() + window
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                if not msg.data:  # a status message: "no responders"
                    break
                yield msg.data
        finally:
            await sub.unsubscribe()
