"""The router's side of the llm protocol (edge_common.wire): stream one chat, discover models.

`stream_chat` listens on a fresh inbox, asks `llm.chat.<model>` (a queue group of the
workers serving that model: one takes it), and yields the worker's events. If the
consumer stops early (client gone, error), the worker is told to cancel. Transport
failures become ApiErrors here and nowhere else.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import structlog
from edge_common import wire
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    NoRespondersError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from edge_router.errors import ApiError, from_wire, unavailable

log = structlog.get_logger(__name__)


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

    async def aclose(self) -> None:
        """Stop listening to the streams still open (shutting down), so that the bus drains
        at once instead of waiting for events nobody will read."""
        for sub in list(self._streams):
            await self._drop(sub)

    async def _drop(self, sub: Subscription) -> None:
        self._streams.discard(sub)
        with contextlib.suppress(BadSubscriptionError, ConnectionClosedError):
            await sub.unsubscribe()

    async def stream_chat(self, request: wire.ChatRequest) -> AsyncIterator[wire.Delta | wire.Done]:
        """Submit `request` (its `stream_to` is replaced); raise ApiError if it is refused."""
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
        wire.decode_accepted(reply.data)  # a worker that answers otherwise is not one of ours
        return self._events(request.request_id, sub)

    async def _events(self, request_id: str, sub) -> AsyncIterator[wire.Delta | wire.Done]:
        finished = False
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self._idle_timeout)
                except NatsTimeout:
                    raise ApiError("The llm service stopped responding.", code="timeout") from None
                event = wire.decode_event(msg.data)
                if isinstance(event, wire.Alive):
                    await msg.respond(b"")  # we still listen
                    continue
                if isinstance(event, wire.Failed):
                    finished = True
                    raise from_wire(event.code, event.message, request_id)
                yield event
                if isinstance(event, wire.Done):
                    finished = True
                    return
        finally:
            # shielded: this runs when the HTTP client went away and our task is cancelled
            await asyncio.shield(self._close(request_id, sub, finished))

    async def _close(self, request_id: str, sub, finished: bool) -> None:
        if not finished:
            # shutting down, the bus may be gone: the worker then notices by its keepalives
            with contextlib.suppress(ConnectionClosedError, ConnectionDrainingError):
                await self._cancel(request_id)
        await self._drop(sub)

    async def _cancel(self, request_id: str) -> None:
        log.info("router.cancel_sent", request_id=request_id)
        await self._nc.publish(
            wire.cancel_subject(request_id), wire.encode(wire.Cancel(request_id=request_id))
        )
        await self._nc.flush()

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
