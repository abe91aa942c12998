"""Start a service process: settings, logging, then its Litestar app under uvicorn."""

import asyncio
import sys
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from litestar import Litestar
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge_common.logs import configure_logging
from edge_common.settings import ServiceSettings, SettingsError, load_settings

S = TypeVar("S", bound=ServiceSettings)

MAX_HEAD_BYTES = 16 * 1024
"""A request line and headers longer than this get 431 (h11's limit, which we used before)."""
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nRequest header fields too large"
)


class _TimedRequestProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: a third of the router's per-request CPU
    went to h11's pure-Python parsing), closing a connection whose request head (request
    line and headers) is not complete `head_timeout_s` after it started, or whose body is
    not complete `body_timeout_s` after the head: uvicorn waits for both forever, so slow
    clients (slowloris, or a body sent a byte at a time) could hold every connection. A head
    over MAX_HEAD_BYTES is refused (httptools has no limit of its own). Idle kept-alive
    connections are closed by uvicorn's keep-alive timeout."""

    head_timeout_s = 10.0
    body_timeout_s = 30.0
    _timer: asyncio.TimerHandle | None = None
    _in_message = False
    _refused = False
    """Between a request's first byte and its end (head and body)."""
    _head_bytes: int | None = None
    """Bytes of the current request head so far; None once the head is complete."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time(self.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # after a 431: dropped until the client closes or the timer does
        if self._timer is None and not self._in_message:
            self._time(self.head_timeout_s)  # the first bytes of the next request, kept alive
        super().data_received(data)
        if self._head_bytes is not None:  # the head is still incomplete after these bytes
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()

    def on_message_begin(self) -> None:
        self._in_message, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_timer()
        self._head_bytes = None
        self._time(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_timer()
        self._in_message = False
        super().on_message_complete()

    def _refuse(self) -> None:
        """431, then the write side closed but reading on: closing with the client's bytes
        unread would send a reset, which can destroy the answer before the client reads it."""
        self._refused = True
        self.transport.write(HEAD_TOO_LARGE)
        self.transport.write_eof()
        self._stop_timer()
        self._time(self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _time(self, limit: float) -> None:
        self._timer = self.loop.call_later(limit, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()


def _protocol(settings: ServiceSettings) -> type[HttpToolsProtocol]:
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
