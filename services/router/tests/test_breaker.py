"""The circuit breaker's states over a controlled clock."""

from edge_router.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    """N consecutive failures open it; a success in between resets the count."""
    breaker = Breaker(failures=3, reset_s=10, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()


def test_half_open_lets_one_probe_and_its_outcome_decides() -> None:
    """After reset_s one probe passes; failure reopens for reset_s, success closes."""
    clock = Clock()
    breaker = Breaker(failures=1, reset_s=10, clock=clock)
    breaker.failure()
    clock.now += 4
    assert breaker.retry_in() == 6
    clock.now += 6
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert breaker.state == "open"
    assert breaker.retry_in() == 10
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()
