"""The router's side of the llm protocol (edge_common.wire): stream one chat, discover models.

`stream_chat` listens on a fresh inbox, asks `llm.chat.<model>` (a queue group of the
workers serving that model: one takes it), and yields the worker's events. If the
consumer stops early (client gone, error), the worker is told to cancel. Transport
failures become ApiErrors here and nowhere else.

A worker that dies is seen within about two seconds without tight timers: after a second
without events the router asks the worker's own alive subject, and NATS answers "no
responders" at once when that worker's connection is gone. A worker that is only slow (a
saturated CPU) answers late or not at all, which is no alarm: only `idle_timeout` of total
silence ends its stream. While the router's own bus connection is down, nothing is sent and
open streams end at once: the workers cannot reach us either.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import msgspec
import structlog
from edge_common import wire
from edge_common.bus import on_disconnect
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    MaxPayloadError,
    NoRespondersError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from edge_router.errors import InvalidRequest, from_wire, unavailable

log = structlog.get_logger(__name__)
PROBE_S = wire.ALIVE_INTERVAL_S
"""Silence after which the router asks NATS whether the worker is still connected."""
BUS_DOWN = "The message bus is unreachable; try again shortly."
WORKER_GONE = "The llm worker serving this request stopped; try again shortly."
EVENTS_LOST = "Part of the answer was lost on the message bus; try again."
Events = AsyncGenerator[wire.Delta | wire.Done, None]
_GONE = (ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError)


class WorkerData(msgspec.Struct):
    """What an llm instance adds to its STATS (edge_llm.server.LlmServer.micro_stats)."""

    resident: list[str] = []
    switch_s: float = 0.0


class EndpointStats(msgspec.Struct):
    data: WorkerData | None = None


class ServiceStats(msgspec.Struct):
    """The part of a micro STATS reply we read."""

    metadata: dict[str, str] = {}
    endpoints: list[EndpointStats] = []


class Discovery(msgspec.Struct):
    cards: dict[str, wire.ModelCard]
    instances: int
    resident: set[str]
    switch_s: float


class LlmClient:
    def __init__(self, nc: Client, *, accept_timeout: float, idle_timeout: float) -> None:
        self._nc = nc
        self._accept_timeout = accept_timeout
        self._idle_timeout = idle_timeout
        self._streams: set[Subscription] = set()
        self._disconnects = 0
        """Bus disconnections so far: a stream that saw one may have lost events."""
        on_disconnect(nc, self._disconnected)

    async def _disconnected(self) -> None:
        self._disconnects += 1

    async def aclose(self) -> None:
        """Stop listening to the streams still open (shutting down), so that the bus drains
        at once instead of waiting for events nobody will read."""
        for sub in list(self._streams):
            await self._drop(sub)

    async def _drop(self, sub: Subscription) -> None:
        self._streams.discard(sub)
        with contextlib.suppress(BadSubscriptionError, ConnectionClosedError):
            await sub.unsubscribe()

    async def stream_chat(self, request: wire.ChatRequest) -> Events:
        """Submit `request` (its `stream_to` is replaced); raise ApiError if it is refused."""
        if not self._nc.is_connected:
            raise unavailable(BUS_DOWN)
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        self._streams.add(sub)
        request = msgspec.structs.replace(request, stream_to=inbox)
        headers = {wire.REQUEST_ID_HEADER: request.request_id}
        try:
            reply = await self._nc.request(
                wire.chat_subject(request.model),
                wire.encode(request),
                timeout=self._accept_timeout,
                headers=headers,
            )
        except NoRespondersError:
            await self._drop(sub)
            raise unavailable(
                f"No llm service serving `{request.model}` is running; try again shortly."
            ) from None
        except MaxPayloadError:
            await self._drop(sub)
            raise InvalidRequest(
                "The messages are too long for the local model: reduce their length.",
                param="messages",
                code="context_length_exceeded",
            ) from None
        except _GONE:
            await self._drop(sub)
            raise unavailable(BUS_DOWN) from None
        except NatsTimeout:
            await self._drop(sub)
            # the request may still be queued on a worker that is slow to answer
            await self._cancel(request.request_id)
            raise unavailable("The llm service did not answer in time.") from None
        if reply.headers and ERROR_CODE_HEADER in reply.headers:
            await self._drop(sub)
            raise from_wire(
                reply.headers[ERROR_CODE_HEADER],
                reply.headers.get(ERROR_HEADER, ""),
                request.request_id,
            )
        # a worker that answers otherwise is not one of ours
        accepted = wire.decode_accepted(reply.data)
        return self._events(request.request_id, sub, accepted.instance, self._disconnects)

    async def _next(self, sub: Subscription, instance: str, disconnects: int) -> Msg:
        """The worker's next event; ApiError once the worker is known to be gone, or the
        bus was lost since the request started (events may have been lost with it)."""
        loop = asyncio.get_running_loop()
        silent_until = loop.time() + self._idle_timeout
        while True:
            try:
                msg = await sub.next_msg(timeout=min(PROBE_S, self._idle_timeout))
            except NatsTimeout:
                msg = None
            if not self._nc.is_connected or self._disconnects != disconnects:
                raise unavailable(BUS_DOWN)
            if msg is not None:
                return msg
            if loop.time() >= silent_until:
                raise unavailable("The llm worker stopped responding; try again shortly.")
            if instance and not await self._connected(instance):
                raise unavailable(WORKER_GONE)

    async def _connected(self, instance: str) -> bool:
        """False only when NATS knows the worker's connection is gone (no responders); a
        slow answer is no proof of death."""
        try:
            await self._nc.request(wire.alive_subject(instance), b"", timeout=PROBE_S)
        except NoRespondersError:
            return False
        except (NatsTimeout, *_GONE):
            pass
        return True

    async def _events(
        self, request_id: str, sub: Subscription, instance: str, disconnects: int
    ) -> Events:
        finished = False
        expected = 1
        try:
            while True:
                msg = await self._next(sub, instance, disconnects)
                event = wire.decode_event(msg.data)
                if isinstance(event, wire.Alive):
                    await msg.respond(b"")  # we still listen
                    continue
                if isinstance(event, wire.Failed):
                    finished = True
                    raise from_wire(event.code, event.message, request_id)
                if event.n and event.n != expected:  # see wire.Delta.n
                    log.warning("router.events_lost", expected=expected, got=event.n)
                    raise unavailable(EVENTS_LOST)
                expected += 1
                yield event
                if isinstance(event, wire.Done):
                    finished = True
                    return
        finally:
            # shielded: this runs when the HTTP client went away and our task is cancelled
            await asyncio.shield(self._close(request_id, sub, finished))

    async def _close(self, request_id: str, sub: Subscription, finished: bool) -> None:
        if not finished:
            # the bus may be gone: the worker then notices by its keepalives
            with contextlib.suppress(*_GONE):
                await self._cancel(request_id)
        await self._drop(sub)

    async def _cancel(self, request_id: str) -> None:
        log.info("router.cancel_sent", request_id=request_id)
        await self._nc.publish(
            wire.cancel_subject(request_id), wire.encode(wire.Cancel(request_id=request_id))
        )
        # No flush: nats-py's flusher sends it at once, and a flush that times out (a stalled
        # server) leaves a cancelled future behind whose late PONG kills the read loop for good.

    async def discover(self, window: float) -> "Discovery":
        """What the running llm instances serve and hold: scatter STATS, gather replies for
        `window` s (micro STATS carry the service metadata and our per-endpoint data)."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        found = Discovery(cards={}, instances=0, resident=set(), switch_s=0.0)
        try:
            await self._nc.publish("$SRV.STATS.llm", b"", reply=inbox)
            deadline = asyncio.get_running_loop().time() + window
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                if not msg.data:  # a status message: "no responders"
                    break
                try:
                    stats = msgspec.json.decode(msg.data, type=ServiceStats)
                    cards = wire.decode_models(stats.metadata.get("models", "[]"))
                except msgspec.DecodeError as exc:
                    log.warning("router.bad_service_stats", error=str(exc))
                    continue
                found.instances += 1
                for card in cards:
                    found.cards.setdefault(card.id, card)
                for endpoint in stats.endpoints:
                    data = endpoint.data or WorkerData()
                    found.resident.update(data.resident)
                    found.switch_s = max(found.switch_s, data.switch_s)
            return found
        finally:
            await sub.unsubscribe()
