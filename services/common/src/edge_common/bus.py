"""NATS connection and `nats.micro` service bootstrap.

Services never address each other by host or port, only by subject: this module is the
one place that knows how to reach the bus.
"""

import asyncio
import contextlib
import os
import signal
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import nats
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Handler
from nats.micro.service import EndpointStats, Service

from edge_common.wire import up_subject

log = structlog.get_logger(__name__)


Listener = Callable[[], Awaitable[None]]
BusEvent = Literal["disconnect", "reconnect"]
_listeners: "weakref.WeakKeyDictionary[Client, dict[BusEvent, list[Listener]]]" = (
    weakref.WeakKeyDictionary()
)


def on_reconnect(nc: Client, listener: Listener) -> None:
    """Call `listener` each time `nc` (made by `connect`) is back on the bus: nats-py has one
    reconnect callback per client, and several parts of a service need to hear it."""
    _listeners.setdefault(nc, {}).setdefault("reconnect", []).append(listener)


def on_disconnect(nc: Client, listener: Listener) -> None:
    """Call `listener` each time `nc` (made by `connect`) loses the bus."""
    _listeners.setdefault(nc, {}).setdefault("disconnect", []).append(listener)


async def _tell(nc: Client, event: BusEvent) -> None:
    for listener in _listeners.get(nc, {}).get(event, []):
        await listener()


class BusUnreachable(RuntimeError):
    """NATS could not be reached at startup, or refused the service's credentials."""


def credentials(name: str, password: str) -> dict[str, Any]:
    """nats.connect options for service `name`: its user (when it has a password) and its
    own inbox prefix, the one nats.conf lets it subscribe to."""
    auth = {"user": name, "password": password} if password else {}
    return {"name": name, "inbox_prefix": f"_INBOX.{name}", **auth}


@asynccontextmanager
async def connect(
    url: str, name: str, password: str = "", first_connect_s: float = 30.0
) -> AsyncIterator[Client]:
    """Service `name`'s connection: once up, it reconnects forever; drained on exit.

    The first connection must succeed within `first_connect_s`: a service that cannot reach
    the bus at startup (or is refused, e.g. a wrong password) exits with a clear error for
    its supervisor to restart it.
    """

    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        log.warning("nats.error", error=repr(exc))
        if "authorization violation" in str(exc).lower() and not refused.done():
            refused.set_result(exc)

    async def disconnected() -> None:
        log.warning("nats.disconnected")
        if connecting.done() and not connecting.cancelled() and not connecting.exception():
            await _tell(connecting.result(), "disconnect")

    async def reconnected() -> None:
        log.info("nats.reconnected")
        await _tell(connecting.result(), "reconnect")

    leaving = False

    async def closed() -> None:
        if not leaving:  # nats-py gave up for good (a protocol error): start afresh
            log.error("nats.closed", action="stopping for the supervisor to restart us")
            os.kill(os.getpid(), signal.SIGTERM)

    connecting = asyncio.ensure_future(
        nats.connect(
            url,
            **credentials(name, password),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=closed,
        )
    )
    await asyncio.wait(
        [connecting, refused], timeout=first_connect_s, return_when="FIRST_COMPLETED"
    )
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        if refused.done():
            raise BusUnreachable(f"NATS at {url} refused {name}: {refused.result()}")
        raise BusUnreachable(f"NATS at {url} unreachable for {first_connect_s} s")
    nc = connecting.result()
    try:
        yield nc
    finally:
        leaving = True
        if not nc.is_closed:
            try:
                await nc.drain()
            except nats.errors.Error:  # the bus is away (reconnecting): nothing to drain to
                await nc.close()


@asynccontextmanager
async def serve(
    nc: Client,
    *,
    name: str,
    version: str,
    description: str,
    endpoints: Mapping[str, Handler],
    metadata: Mapping[str, str] | None = None,
    stats: Callable[[EndpointStats], Any] | None = None,
) -> AsyncIterator[Service]:
    """Register a micro service (queue group `q`) with one endpoint per subject.

    `stats` supplies each endpoint's `data` in STATS replies (live state for discovery).
    """
    service = await add_service(
        nc,
        name=name,
        version=version,
        description=description,
        metadata=dict(metadata or {}),
        stats_handler=stats,
    )
    try:
        for subject, handler in endpoints.items():
            await service.add_endpoint(
                name=subject.replace(".", "-"), subject=subject, handler=handler
            )
        await nc.publish(up_subject(name), service.id.encode())
        await nc.flush()
        log.info("service.started", name=name, id=service.id, subjects=list(endpoints))
        yield service
    finally:
        await service.stop()
