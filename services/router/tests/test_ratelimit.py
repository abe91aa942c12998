"""Per-key rate limits on a controlled clock."""

import pytest
from edge_router.errors import (
    BadGateway,
    ClientGone,
    InvalidRequest,
    RateLimited,
    ServerError,
    model_not_found,
    unavailable,
)
from edge_router.keys import KeyRecord
from edge_router.ratelimit import RateLimits, counts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> KeyRecord:
    return KeyRecord(name="k", sha256="x", **limits)  # type: ignore[arg-type]


def test_requests_per_minute_refill_continuously() -> None:
    """rpm=2: the third request waits ~30 s (one refills every 30 s), with headers."""
    clock = Clock()
    limits, k = RateLimits(clock), key(rpm=2)
    first = limits.admit(k, 0)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    limits.admit(k, 0)
    with pytest.raises(RateLimited) as err:
        limits.admit(k, 0)
    assert (err.value.status, err.value.code) == (429, "rate_limit_requests")
    assert err.value.headers["retry-after"] == "30"
    assert err.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.value.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 30
    limits.admit(k, 0)


def test_tokens_are_settled_with_real_usage() -> None:
    """tpm=1000: an estimate of 600 is taken up front, and what was not used comes back."""
    clock = Clock()
    limits, k = RateLimits(clock), key(tpm=1000)
    ticket = limits.admit(k, 600)
    with pytest.raises(RateLimited) as err:
        limits.admit(k, 600)
    assert err.value.code == "rate_limit_tokens"
    ticket.finish(used_tokens=100)  # 500 of the estimate return
    assert limits.headers(k)["x-ratelimit-remaining-tokens"] == "900"
    limits.admit(k, 600)
    with pytest.raises(RateLimited, match="asks ~5000"):
        limits.admit(k, 5000)  # more than a whole minute's budget


def test_parallel_requests() -> None:
    """max_parallel=1: a second request at once is refused until the first ends."""
    limits, k = RateLimits(Clock()), key(max_parallel=1)
    first = limits.admit(k, 0)
    with pytest.raises(RateLimited) as err:
        limits.admit(k, 0)
    assert err.value.code == "rate_limit_parallel"
    first.finish(None)
    limits.admit(k, 0)


def test_refund_gives_back_request_tokens_and_slot() -> None:
    """A request refused after admission (it reached no model) takes nothing in the end."""
    clock = Clock()
    limits, k = RateLimits(clock), key(rpm=1, tpm=1000, max_parallel=1)
    limits.admit(k, 600).refund()
    assert limits.headers(k)["x-ratelimit-remaining-requests"] == "1"
    assert limits.headers(k)["x-ratelimit-remaining-tokens"] == "1000"
    ticket = limits.admit(k, 600)  # the slot, the request and the tokens are all there
    ticket.finish(used_tokens=None)
    ticket.refund()  # settled once: a late refund changes nothing
    assert limits.headers(k)["x-ratelimit-remaining-requests"] == "0"
    assert limits.headers(k)["x-ratelimit-remaining-tokens"] == "400"


def test_a_request_without_a_model_takes_one_request_only() -> None:
    """estimate None (the route explainer): one request, no tokens and no parallel slot."""
    clock = Clock()
    limits, k = RateLimits(clock), key(rpm=2, tpm=100, max_parallel=1)
    running = limits.admit(k, 100)  # the whole token budget and the only slot
    explained = limits.admit(k, None)
    assert explained.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as err:
        limits.admit(k, None)
    assert err.value.code == "rate_limit_requests"
    explained.finish(None)
    running.finish(None)
    clock.now += 30
    limits.admit(k, 0)  # the explanation held no slot


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (InvalidRequest("bad"), False),
        (model_not_found("x"), False),
        (unavailable("down"), False),
        (ValueError("our bug"), False),
        (ClientGone("left"), True),
        (ServerError("generation failed"), True),
        (BadGateway("upstream broke"), True),
    ],
    ids=["400", "404", "503", "unexpected", "499", "500", "502"],
)
def test_what_counts(error: Exception, counted: bool) -> None:
    """Failures before the answer count only when a model may have run (499, 500, 502)."""
    assert counts(error) is counted
