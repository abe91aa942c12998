"""Start a service process: settings, logging, then its Litestar app under uvicorn."""

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

import h11
import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_common.logs import configure_logging
from edge_common.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)


class _HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head (request line and
    headers) is not complete `head_timeout_s` after it started: uvicorn waits for a head
    forever, so slow clients (slowloris) could hold every connection. Bodies are not timed;
    idle kept-alive connections are closed by uvicorn's keep-alive timeout."""

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            # the first bytes of the next request on a kept-alive connection
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._head_timer.cancel()  # the head is complete
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol(timeout_s: float) -> type[H11Protocol]:
    class Protocol(_HeadTimeoutProtocol):  # uvicorn makes one per connection from the class
        head_timeout_s = timeout_s

    return Protocol


def main(service: str, settings_cls: type[S], create_app: Callable[[S], Litestar]) -> None:
    try:
        settings = load_settings(settings_cls, service)
    except SettingsError as exc:
        sys.exit(f"edge-{service}: {exc}")
    configure_logging(service, settings.log_level)
    # log_config=None keeps uvicorn on the root logger that configure_logging set up
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=_protocol(settings.header_timeout_s),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        lifespan="on",
    )
