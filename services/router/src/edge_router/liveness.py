"""Waiting for a worker's next event, telling a dead worker from a slow one.

A worker that dies is seen within about two seconds without tight timers: after a second
without events the router asks the worker's own alive subject, and NATS answers "no
responders" at once when that worker's connection is gone. A worker that is only slow (a
saturated CPU) answers late or not at all, which is no alarm: only `idle_timeout` of total
silence ends its stream. While the router's own bus connection is down, open streams end at
once: the workers cannot reach us either, and events sent meanwhile may be lost.
"""

import asyncio

from edge_common import wire
from edge_common.bus import on_disconnect
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    NoRespondersError,
)
from nats.errors import TimeoutError as NatsTimeout

from edge_router.errors import unavailable

PROBE_S = wire.ALIVE_INTERVAL_S
"""Silence after which the router asks NATS whether the worker is still connected."""
BUS_DOWN = "The message bus is unreachable; try again shortly."
GONE = (ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError)
"""What nats-py raises while the router's own connection is not usable."""


class Liveness:
    """Watches the workers of one service (`llm`, `vision`...) and the router's bus."""

    def __init__(self, nc: Client, service: str, *, idle_timeout: float) -> None:
        self._nc = nc
        self._service = service
        self._idle_timeout = idle_timeout
        self.disconnects = 0
        """Bus disconnections so far: a stream that saw one may have lost events."""
        on_disconnect(nc, self._disconnected)

    async def _disconnected(self) -> None:
        self.disconnects += 1

    async def next(self, sub: Subscription, instance: str, disconnects: int) -> Msg:
        """The worker's next message on `sub`; ApiError once the worker (`instance`, its
        micro service id) is known to be gone, or the bus was lost since `disconnects` was
        read (events may have been lost with it)."""
        loop = asyncio.get_running_loop()
        silent_until = loop.time() + self._idle_timeout
        while True:
            try:
                msg = await sub.next_msg(timeout=min(PROBE_S, self._idle_timeout))
            except NatsTimeout:
                msg = None
            if not self._nc.is_connected or self.disconnects != disconnects:
                raise unavailable(BUS_DOWN)
            if msg is not None:
                return msg
            if loop.time() >= silent_until:
                raise unavailable(
                    f"The {self._service} worker stopped responding; try again shortly."
                )
            if instance and not await self._connected(instance):
                raise unavailable(
                    f"The {self._service} worker serving this request stopped; try again shortly."
                )

    async def _connected(self, instance: str) -> bool:
        """False only when NATS knows the worker's connection is gone (no responders); a
        slow answer is no proof of death."""
        try:
            await self._nc.request(
                wire.alive_subject(self._service, instance), b"", timeout=PROBE_S
            )
        except NoRespondersError:
            return False
        except (NatsTimeout, *GONE):
            pass
        return True
