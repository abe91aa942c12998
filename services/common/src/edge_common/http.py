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
    """Between a request's first byte and its end (head and body)."""
    _head_bytes: int | None = None
    """Bytes of the current request head so far; None once the head is complete."""
    _too_large = False
    _refused = False
    _ended_in_read = False
    _by_reads = False
    """The current head is counted by the bytes read, not by its parsed pieces."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time(self.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # after a 431: dropped until the client closes or the timer does
        if self._timer is None and not self._in_message:
            self._time(self.head_timeout_s)  # the first bytes of the next request, kept alive
        self._ended_in_read = False
        super().data_received(data)
        if self._head_bytes is not None and not self._ended_in_read:
            # the head is still incomplete: httptools buffers a header it has not seen the
            # end of, which the callbacks below cannot count. Not when a request ended in
            # these bytes (pipelined): they are its body as much as the next head, and one
            # read is bounded; the next reads count.
            if not self._by_reads:  # what the callbacks counted is in these bytes too
                self._by_reads, self._head_bytes = True, 0
            self._count(len(data))
        if self._too_large and not self._refused:
            self._refuse()

    def _count(self, head_bytes: int) -> None:
        if self._head_bytes is not None:
            self._head_bytes += head_bytes
            self._too_large = self._head_bytes > MAX_HEAD_BYTES

    def on_message_begin(self) -> None:
        self._in_message, self._head_bytes, self._by_reads = True, 0, False
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._by_reads:  # else counted with the reads that brought it
            self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._by_reads:
            self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._too_large:
            return  # refused once this read is parsed: the app never sees the request
        self._stop_timer()
        self._head_bytes = None
        self._time(self.body_timeout_s)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        self._ended_in_read = True
        self._stop_timer()
        self._in_message = False
        super().on_message_complete()
        upgrade = self.parser.should_upgrade() and self._should_upgrade()  # no cycle then
        if not upgrade and self.cycle.response_complete and not self.transport.is_closing():
            # answered before its body ended (an early 404 or 413): the body's bytes since
            # cancelled uvicorn's keep-alive timer, and nothing else would close it
            self._time(self.head_timeout_s)

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
