"""Cross-dialect fallback: when may a failed request be retried on the other backend?

Only idempotent requests whose body is still at hand (not streamed away), before the
client has seen anything, when the failure is a connect error, a timeout or one of the
route's `fallback_on` answers (default 500, 502, 503, 504), and within a retry budget.

The budget is a token bucket that earns `ratio` of a token per request and spends one per
fallback; a fallback that the other backend answers well gives its token back. So while the
other backend is healthy every failure is rescued (during a cutover that is Rust, which
carried all of this traffic before), and when it fails too, retries stay a bounded share of
traffic instead of doubling the load on two failing backends.
"""

from __future__ import annotations


class RetryBudget:
    """At most `ratio` unsuccessful fallbacks per request over time, plus a `burst`.

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

    def refund(self) -> None:
        """The fallback was answered without a failure: it cost the other backend nothing
        it could not take, so it does not count against the budget."""
        self._tokens = min(self.burst, self._tokens + 1.0)


class FallbackStatus(Exception):
    """The backend answered one of the route's `fallback_on` statuses; the request will be
    retried on the other backend."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status
