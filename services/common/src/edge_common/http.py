"""Start a service process: settings, logging, then its Litestar app under uvicorn."""

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

import h11
import uvicorn
from h11._util import Sentinel
from litestar import Litestar
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_common.logs import configure_logging
from edge_common.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)


class _TimedRequestProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head (request line and
    headers) is not complete `head_timeout_s` after it started, or whose body is not complete
    `body_timeout_s` after the head: uvicorn waits for both forever, so slow clients
    (slowloris, or a body sent a byte at a time) could hold every connection. Idle kept-alive
    connections are closed by uvicorn's keep-alive timeout."""

    head_timeout_s = 10.0
    body_timeout_s = 30.0
    _timer: asyncio.TimerHandle | None = None
    _timing: type[Sentinel] | None = None
    """The client state being timed: IDLE (the head) or SEND_BODY."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time(h11.IDLE)

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self.conn.their_state is h11.IDLE:
            self._time(h11.IDLE)  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is not self._timing:
            self._stop_timer()
            if state is h11.SEND_BODY:
                self._time(h11.SEND_BODY)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _time(self, state: type[Sentinel]) -> None:
        limit = self.head_timeout_s if state is h11.IDLE else self.body_timeout_s
        self._timing = state
        self._timer = self.loop.call_later(limit, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timing = None

    def _timed_out(self) -> None:
        self._timer = self._timing = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol(settings: ServiceSettings) -> type[H11Protocol]:
    class Protocol(_TimedRequestProtocol):  # uvicorn makes one per connection from the class
        head_timeout_s = settings.header_timeout_s
        body_timeout_s = settings.body_timeout_s

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
        http=_protocol(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        lifespan="on",
    )
