"""A circuit breaker per cloud upstream.

closed -> (N consecutive failures) -> open -> (reset_s later) -> half_open: one probe passes;
its success closes the breaker, its failure opens it again for another reset_s.
"""

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self.retry_in() == 0:
            return "half_open"
        return "open"

    def retry_in(self) -> float:
        """Seconds until a probe may pass (0 when closed or due)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_s - self._clock())

    def allow(self) -> bool:
        """May a request go out now? In half_open only the one probe may."""
        match self.state:
            case "closed":
                return True
            case "half_open" if not self._probing:
                self._probing = True
                return True
            case _:
                return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._probing = False
