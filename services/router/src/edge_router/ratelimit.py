"""Per-key rate limits: requests/min, tokens/min, parallel requests.

Token buckets refill continuously (a limit of 60/min refills one a second). A chat request
takes one request, its token estimate (prompt estimate + max_tokens) and a parallel slot
when admitted; the token bucket is settled with the real usage when it ends. A route
explanation (`/v1/route/explain`) takes one request and nothing else. Refusals are 429 with
Retry-After; every answer to a limited key carries OpenAI's `x-ratelimit-*` headers.

What counts, as with OpenAI: requests that may have reached a model. A request refused
after admission gives everything back (`counts` is false): a 4xx the client caused
(invalid value, unknown model, unsupported feature, context too long, a cloud's own 4xx) or
a local queue that is full, and a 503 (no service could take it). A client that leaves
before the answer (499), a generation that failed (500, 502) and anything that fails once
the answer has begun count, with the usage known by then.
"""

import math
import time
from collections.abc import Callable

from edge_router.errors import ApiError, RateLimited
from edge_router.keys import KeyRecord


class Bucket:
    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self._level = float(per_minute)
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.limit, self._level + (now - self._at) * self.limit / 60)
        self._at = now

    def remaining(self) -> int:
        self._refill()
        return max(0, math.floor(self._level))

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is)."""
        self._refill()
        return max(0.0, (amount - self._level) * 60 / self.limit)

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= amount

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return (self.limit - self._level) * 60 / self.limit


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def counts(error: Exception) -> bool:
    """Whether a request that failed with `error` before its answer began still counts
    against its key's limits: only when it may have reached a model (see above)."""
    if not isinstance(error, ApiError):
        return False  # our own bug: nothing ran
    return error.status == 499 or (error.status >= 500 and error.status != 503)


class Ticket:
    """An admitted request: its headers, and the settlement when it ends (once)."""

    def __init__(self, limits: "RateLimits", key: KeyRecord, estimate: int | None) -> None:
        self._limits, self._key, self._estimate = limits, key, estimate
        self._open = True
        self.headers = limits.headers(key)

    def finish(self, used_tokens: int | None) -> None:
        """The request ran: settle its tokens with `used_tokens` (when known)."""
        if self._open:
            self._open = False
            self._limits.release(self._key, self._estimate, used_tokens)

    def refund(self) -> None:
        """The request reached no model: give back all it took."""
        if self._open:
            self._open = False
            self._limits.release(self._key, self._estimate, 0, refund=True)


class RateLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}
        self._parallel: dict[str, int] = {}

    def _buckets(self, key: KeyRecord) -> tuple[Bucket | None, Bucket | None]:
        if key.rpm and key.name not in self._requests:
            self._requests[key.name] = Bucket(key.rpm, self._clock)
        if key.tpm and key.name not in self._tokens:
            self._tokens[key.name] = Bucket(key.tpm, self._clock)
        return self._requests.get(key.name), self._tokens.get(key.name)

    def headers(self, key: KeyRecord) -> dict[str, str]:
        requests, tokens = self._buckets(key)
        out = {}
        for kind, bucket in (("requests", requests), ("tokens", tokens)):
            if bucket:
                out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                out[f"x-ratelimit-reset-{kind}"] = _duration(bucket.reset_s())
        return out

    def admit(self, key: KeyRecord, estimate: int | None) -> Ticket:
        """Take one request and, for a chat request, `estimate` tokens and a parallel slot
        (`None`: a request that runs no model takes one request only), or raise RateLimited
        at once."""
        requests, tokens = self._buckets(key)
        if estimate is None:
            tokens = None
        elif key.max_parallel and self._parallel.get(key.name, 0) >= key.max_parallel:
            raise self._refused(key, f"{key.max_parallel} requests at once", 1.0, "parallel")
        if requests and (wait := requests.wait_s(1)) > 0:
            raise self._refused(key, f"{key.rpm} requests per minute", wait, "requests")
        if tokens and estimate is not None and estimate > tokens.limit:
            raise self._refused(
                key, f"{key.tpm} tokens per minute (this asks ~{estimate})", 60.0, "tokens"
            )
        if tokens and estimate is not None:
            if (wait := tokens.wait_s(estimate)) > 0:
                raise self._refused(key, f"{key.tpm} tokens per minute", wait, "tokens")
            tokens.take(estimate)
        if requests:
            requests.take(1)
        if estimate is not None:
            self._parallel[key.name] = self._parallel.get(key.name, 0) + 1
        return Ticket(self, key, estimate)

    def release(
        self, key: KeyRecord, estimate: int | None, used: int | None, *, refund: bool = False
    ) -> None:
        """A request ended: its parallel slot comes back, its tokens are settled with `used`
        (unknown: the estimate stays taken); a refund also gives back the request."""
        requests, tokens = self._buckets(key)
        if refund and requests:
            requests.take(-1)  # the bucket's refill caps it at its limit
        if estimate is None:
            return
        self._parallel[key.name] -= 1
        if tokens and used is not None:
            tokens.take(used - estimate)  # give back what was not used, or take the excess

    def _refused(self, key: KeyRecord, what: str, wait_s: float, kind: str) -> RateLimited:
        error = RateLimited(
            f"Rate limit reached for key `{key.name}`: {what}. Retry in {math.ceil(wait_s)} s.",
            code=f"rate_limit_{kind}",
            retry_after=wait_s,
        )
        error.headers.update(self.headers(key))
        return error
