"""Cross-dialect fallback: when may a failed request be retried on the other backend?

Only idempotent requests whose body is still at hand (not streamed away), before the
client has seen anything, when the failure is a connect error, a timeout or a 502/503/504
answer, and within a retry budget: a token bucket that earns `ratio` of a token per
request and spends one per fallback, so retries stay a bounded share of traffic.
"""

from __future__ import annotations

RETRY_STATUSES = frozenset({502, 503, 504})


class RetryBudget:
    """At most `ratio` fallbacks per request over time, plus a `burst` to start with.

    One per worker, used only from its event loop's thread: no lock needed.
    """

    def __init__(self, *, ratio: float, burst: float) -> None:
        self.ratio = ratio
        self.burst = burst
        self._tokens = burst

    def earn(self) -> None:
        """Every request earns a share of a token."""
        self._tokens = min(self.burst, self._tokens + self.ratio)

    def available(self) -> bool:
        return self._tokens >= 1.0

    def spend(self) -> bool:
        """Take a token for one fallback; False when the budget is exhausted."""
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class FallbackStatus(Exception):
    """The backend answered 502/503/504 and the request will be retried elsewhere."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status
