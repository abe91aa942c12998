"""Client of the cloud upstreams: OpenAI-compatible servers over HTTPS.

Per request: retries with jittered exponential backoff (stamina), honouring Retry-After,
only for failures that may pass (connect errors, timeouts, resets, 429, 5xx, a stream that
ends before its first event), within a total deadline, and never once a token was handed
on. A circuit breaker per upstream stops calls to one that keeps failing. Bodies and
stream events are relayed as the upstream sent them, after checking each is valid JSON.

The HTTP client is aiohttp: on this path httpx cost ~1.1 ms of CPU per request and aiohttp
~0.25 ms (measured side by side against the same local upstream; see bench/gateway.py).
"""

import asyncio
import email.utils
import os
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import aiohttp
import msgspec
import stamina
import structlog
from aiohttp.http_exceptions import LineTooLong

from edge_router.breaker import Breaker
from edge_router.errors import BadGateway, UpstreamAnswer, unavailable
from edge_router.settings import Upstream

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Retryable(Exception):
    """A failure that may pass. `reason` reaches the client; `detail` (the client library's
    message, which may name the upstream's address or quote its bytes) only the log."""

    def __init__(self, reason: str, retry_after: float | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.detail = detail


class MidStreamFailure(BadGateway):
    """The upstream failed after tokens were relayed: no retry, no fallback."""


TransportError = (aiohttp.ClientError, asyncio.TimeoutError)
"""What a failed connection, read or timeout raises (aiohttp's socket timeouts are both)."""
LINE_BUFFER = 1 << 20
"""aiohttp's read buffer; an SSE line may be up to twice this long."""


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (ValueError, OverflowError):  # neither seconds nor a date: as if none
            return None
        return max(0.0, when.timestamp() - time.time())


def api_key(upstream: Upstream) -> tuple[str | None, str]:
    """(the key, "" for a keyless upstream such as another board; or None, why there is none)."""
    if upstream.api_key_env:
        key = os.environ.get(upstream.api_key_env, "").strip()
        return (key, "") if key else (None, f"{upstream.api_key_env} is not set")
    if upstream.api_key_file:
        try:
            key = Path(upstream.api_key_file).read_text().strip()
        except OSError as exc:
            return None, f"cannot read {upstream.api_key_file}: {exc.strerror}"
        return (key, "") if key else (None, f"{upstream.api_key_file} is empty")
    return "", ""


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY, ...), read once, as
    httpx and curl read it (aiohttp's trust_env would read it, and ~/.netrc, per request)."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


async def _next_event(lines: aiohttp.StreamReader, timeout_s: float) -> bytes | None:
    """The next SSE data payload (validated JSON), or None at `[DONE]`, within `timeout_s`
    (TimeoutError): aiohttp's socket read timeout neither fires while comments trickle in
    nor after a broken chunk. A stream that ends before `[DONE]` was cut: aiohttp ends a
    body read to EOF quietly even on a reset."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _event(lines)
    except (ValueError, LineTooLong) as exc:  # a line over aiohttp's limit (ValueError < 3.12)
        raise Retryable("malformed event", detail=str(exc)) from None


async def _event(lines: aiohttp.StreamReader) -> bytes | None:
    async for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return None
        try:
            msgspec.json.decode(payload)
        except msgspec.DecodeError as exc:
            raise Retryable("malformed event", detail=str(exc)) from None
        return payload
    raise Retryable("stream ended before [DONE]")


class CloudClient:
    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self.disabled: dict[str, str] = {}
        """Configured upstreams left out, with the reason (a missing key)."""
        self._http: dict[str, aiohttp.ClientSession] = {}
        self._proxy: dict[str, str | None] = {}
        for u in upstreams:
            key, why_not = api_key(u)
            if key is None:
                self.disabled[u.name] = why_not
                log.warning("cloud.upstream_disabled", upstream=u.name, reason=why_not)
                continue
            self.upstreams[u.name] = u
            headers = {"content-type": "application/json"}
            self._http[u.name] = aiohttp.ClientSession(
                base_url=u.base_url.rstrip("/") + "/",
                headers=headers | ({"authorization": f"Bearer {key}"} if key else {}),
                # connect covers waiting for a pooled connection too, as httpx's pool timeout did
                timeout=aiohttp.ClientTimeout(
                    connect=u.read_timeout_s,
                    sock_connect=u.connect_timeout_s,
                    sock_read=u.read_timeout_s,
                ),
                connector=aiohttp.TCPConnector(limit=32),
                read_bufsize=LINE_BUFFER,
            )
            self._proxy[u.name] = env_proxy(u.base_url)
        self.breakers = {
            n: Breaker(u.breaker_failures, u.breaker_reset_s) for n, u in self.upstreams.items()
        }
        self.retries = dict.fromkeys(self.upstreams, 0)
        """Attempts after the first, per upstream, since start."""

    def models(self) -> dict[str, str]:
        """Model id -> upstream name, in configuration order."""
        return {m: u.name for u in self.upstreams.values() for m in [*u.models, *u.vision_models]}

    def vision_models(self) -> list[str]:
        """Model ids that take images, in configuration order."""
        return [m for u in self.upstreams.values() for m in u.vision_models]

    def open_breakers(self) -> dict[str, float]:
        return {n: b.retry_in() for n, b in self.breakers.items() if b.state == "open"}

    async def aclose(self) -> None:
        for client in self._http.values():
            await client.close()

    async def complete(self, upstream: str, body: dict) -> bytes:
        """A non-streaming completion: the upstream's JSON body."""
        return await self._with_retries(upstream, body, self._complete_once)

    async def stream(self, upstream: str, body: dict) -> AsyncIterator[bytes]:
        """Opens the stream (retrying until the first event arrived); returns all events."""
        return await self._with_retries(upstream, body, self._open_stream)

    async def _with_retries(
        self, name: str, body: dict, once: Callable[[Upstream, dict], Awaitable[T]]
    ) -> T:
        u, breaker = self.upstreams[name], self.breakers[name]
        deadline = time.monotonic() + u.deadline_s

        def retry(exc: Exception) -> bool | float:
            if not isinstance(exc, Retryable):
                return False
            left = deadline - time.monotonic()
            if exc.retry_after is None:
                return left > 0
            return exc.retry_after if exc.retry_after < left else False

        attempts = stamina.retry_context(
            on=retry,
            attempts=u.attempts,
            timeout=u.deadline_s,
            wait_initial=u.backoff_initial_s,
            wait_max=u.backoff_max_s,
            wait_jitter=u.backoff_initial_s,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    if not breaker.allow():
                        raise unavailable(
                            f"Cloud upstream {name} is failing (circuit open).",
                            retry_after=breaker.retry_in(),
                        )
                    if attempt.num > 1:
                        self.retries[name] += 1
                    try:
                        result = await once(u, body)
                    except Retryable as exc:
                        breaker.failure()
                        log.warning(
                            "cloud.attempt_failed",
                            upstream=name,
                            attempt=attempt.num,
                            reason=str(exc),
                            detail=exc.detail,
                            breaker=breaker.state,
                        )
                        raise
                    breaker.success()
                    return result
        except Retryable as exc:
            raise unavailable(f"Cloud upstream {name} failed: {exc}.") from None
        raise AssertionError("unreachable: stamina either returns or raises")

    async def _send(self, u: Upstream, body: dict) -> aiohttp.ClientResponse:
        """The response once its head arrived; the caller releases it (which closes the
        connection unless the body was read to the end)."""
        client = self._http[u.name]
        data = msgspec.json.encode(body)
        try:
            response = await client.post(
                "chat/completions",
                data=data,
                proxy=self._proxy[u.name],
                allow_redirects=False,  # a redirect is no answer (httpx never followed one)
            )
        except TransportError as exc:
            raise Retryable(type(exc).__name__, detail=str(exc)) from None
        status = response.status
        if status == 429 or status >= 500:
            response.release()
            raise Retryable(f"HTTP {status}", retry_after_s(response.headers))
        if status >= 300:
            try:
                content = await _body(response, u.read_timeout_s)
            except TransportError:
                content = b""
            finally:
                response.release()
            if status in (400, 404, 413, 422):
                raise UpstreamAnswer(status, _as_openai_error(content, status, u.name))
            raise BadGateway(
                f"Cloud upstream {u.name} refused the gateway (HTTP {status}).",
                code="upstream_refused",
            )
        return response

    async def _complete_once(self, u: Upstream, body: dict) -> bytes:
        response = await self._send(u, body)
        try:
            content = await _body(response, u.read_timeout_s)
        except TransportError as exc:
            raise Retryable(f"{type(exc).__name__} while reading", detail=str(exc)) from None
        finally:
            response.release()
        try:
            msgspec.json.decode(content)
        except msgspec.DecodeError as exc:
            raise Retryable("malformed response", detail=str(exc)) from None
        return content

    async def _open_stream(self, u: Upstream, body: dict) -> AsyncIterator[bytes]:
        response = await self._send(u, body)
        try:
            first = await _next_event(response.content, u.read_timeout_s)
        except TransportError as exc:
            response.release()
            raise Retryable(f"{type(exc).__name__} before the first event") from None
        except BaseException:
            response.release()
            raise
        if first is None:
            response.release()
            raise Retryable("stream ended before its first event")
        return self._relay(u, response, first)

    async def _relay(
        self, u: Upstream, response: aiohttp.ClientResponse, first: bytes
    ) -> AsyncIterator[bytes]:
        try:
            yield first
            while True:
                try:
                    event = await _next_event(response.content, u.read_timeout_s)
                except (*TransportError, Retryable) as exc:
                    self.breakers[u.name].failure()
                    log.warning("cloud.stream_broken", upstream=u.name, reason=repr(exc))
                    raise MidStreamFailure(
                        f"The cloud upstream {u.name} failed mid-stream.", code="upstream_failed"
                    ) from None
                if event is None:
                    return
                yield event
        finally:
            response.release()


async def _body(response: aiohttp.ClientResponse, timeout_s: float) -> bytes:
    """The whole body within `timeout_s` (TimeoutError): after a broken chunk aiohttp drops
    both the parse error and its socket read timer, and the read would wait for ever."""
    async with asyncio.timeout(timeout_s):
        return await response.read()


def _as_openai_error(content: bytes, status: int, upstream: str) -> bytes:
    """An upstream's refusal as it sent it when it is OpenAI's error shape, else in it (a
    proxy's HTML page, say, would reach clients that expect `error.message`)."""
    try:
        answer = msgspec.json.decode(content)
    except msgspec.DecodeError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return content
    message = f"Cloud upstream {upstream} refused the request (HTTP {status})."
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return msgspec.json.encode({"error": error})
