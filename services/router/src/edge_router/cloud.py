"""Client of the cloud upstreams: OpenAI-compatible servers over HTTPS.

Per request: retries with jittered exponential backoff (stamina), honouring Retry-After,
only for failures that may pass (connect errors, timeouts, resets, 429, 5xx, a stream that
ends before its first event), within a total deadline, and never once a token was handed
on. A circuit breaker per upstream stops calls to one that keeps failing. Bodies and
stream events are relayed as the upstream sent them, after checking each is valid JSON.
"""

import email.utils
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
import stamina
import structlog

from edge_router.breaker import Breaker
from edge_router.errors import BadGateway, UpstreamAnswer, unavailable
from edge_router.settings import Upstream

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class MidStreamFailure(BadGateway):
    """The upstream failed after tokens were relayed: no retry, no fallback."""


def retry_after_s(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


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


async def _next_event(lines: AsyncIterator[str]) -> bytes | None:
    """The next SSE data payload (validated JSON), or None at `[DONE]` / end of stream."""
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        payload = line[5:].strip()
        if payload == "[DONE]":
            return None
        raw = payload.encode()
        try:
            msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise Retryable(f"malformed event: {exc}") from None
        return raw
    return None


class CloudClient:
    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self.disabled: dict[str, str] = {}
        """Configured upstreams left out, with the reason (a missing key)."""
        self._http: dict[str, httpx.AsyncClient] = {}
        for u in upstreams:
            key, why_not = api_key(u)
            if key is None:
                self.disabled[u.name] = why_not
                log.warning("cloud.upstream_disabled", upstream=u.name, reason=why_not)
                continue
            self.upstreams[u.name] = u
            self._http[u.name] = httpx.AsyncClient(
                base_url=u.base_url.rstrip("/") + "/",
                headers={"authorization": f"Bearer {key}"} if key else {},
                timeout=httpx.Timeout(u.read_timeout_s, connect=u.connect_timeout_s),
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            )
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
            await client.aclose()

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
                            breaker=breaker.state,
                        )
                        raise
                    breaker.success()
                    return result
        except Retryable as exc:
            raise unavailable(f"Cloud upstream {name} failed: {exc}.") from None
        raise AssertionError("unreachable: stamina either returns or raises")

    async def _send(self, u: Upstream, body: dict) -> httpx.Response:
        client = self._http[u.name]
        request = client.build_request("POST", "chat/completions", json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            await response.aclose()
            raise Retryable(f"HTTP {response.status_code}", retry_after_s(response.headers))
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            if response.status_code in (400, 404, 413, 422):
                raise UpstreamAnswer(response.status_code, content)
            raise BadGateway(
                f"Cloud upstream {u.name} refused the gateway (HTTP {response.status_code}).",
                code="upstream_refused",
            )
        return response

    async def _complete_once(self, u: Upstream, body: dict) -> bytes:
        response = await self._send(u, body)
        try:
            content = await response.aread()
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__} while reading") from None
        finally:
            await response.aclose()
        try:
            msgspec.json.decode(content)
        except msgspec.DecodeError as exc:
            raise Retryable(f"malformed response: {exc}") from None
        return content

    async def _open_stream(self, u: Upstream, body: dict) -> AsyncIterator[bytes]:
        response = await self._send(u, body)
        lines = response.aiter_lines()
        try:
            first = await _next_event(lines)
        except httpx.TransportError as exc:
            await response.aclose()
            raise Retryable(f"{type(exc).__name__} before the first event") from None
        except Retryable:
            await response.aclose()
            raise
        if first is None:
            await response.aclose()
            raise Retryable("stream ended before its first event")
        return self._relay(u.name, response, lines, first)

    async def _relay(
        self, name: str, response: httpx.Response, lines: AsyncIterator[str], first: bytes
    ) -> AsyncIterator[bytes]:
        try:
            yield first
            while True:
                try:
                    event = await _next_event(lines)
                except (httpx.TransportError, Retryable) as exc:
                    self.breakers[name].failure()
                    log.warning("cloud.stream_broken", upstream=name, reason=str(exc))
                    raise MidStreamFailure(
                        f"The cloud upstream {name} failed mid-stream.", code="upstream_failed"
                    ) from None
                if event is None:
                    return
                yield event
        finally:
            await response.aclose()
