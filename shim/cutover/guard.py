"""The guard: rolls an endpoint back to Rust when Go misbehaves, and only then.

Each worker watches the Go-served requests of each endpoint over a sliding window: error
ratio (5xx answers, unreachable, timeouts), p99 latency and, where shadowing, the share of
failed parity comparisons. Too little traffic is INCONCLUSIVE: the guard holds, it never
promotes and never rolls back on no data. A failing check must repeat `trip_after` times
in a row before it acts (no flapping on one bad second); then one rollback, audited with
actor `guard` and the reason, and the window starts afresh. A flag change by an operator
also starts the windows afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shim import metrics
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.errors import ShimError
from shim.routes import GuardPolicy, RouteTable
from shim.types import Outcome

log = logging.getLogger("shim.guard")
MIN_PARITY_SAMPLES = 5
HOLD, OK, FAILING = Outcome.INCONCLUSIVE, Outcome.PASS, Outcome.FAIL


@dataclass
class Window:
    """One endpoint's recent Go outcomes: (time, ok, seconds) and (time, matched)."""

    requests: deque[tuple[float, bool, float]] = field(default_factory=deque)
    comparisons: deque[tuple[float, bool]] = field(default_factory=deque)
    failing_checks: int = 0

    def prune(self, cutoff: float) -> None:
        while self.requests and self.requests[0][0] < cutoff:
            self.requests.popleft()
        while self.comparisons and self.comparisons[0][0] < cutoff:
            self.comparisons.popleft()


@dataclass(frozen=True, slots=True)
class Check:
    """The guard's view of one endpoint at one moment."""

    endpoint: str
    status: Outcome
    reason: str
    requests: int


class Guard:
    """Per-worker automatic rollback; `clock` is injectable so tests can simulate time."""

    def __init__(
        self,
        routes: RouteTable,
        flags: FlagView,
        store: FlagStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes = routes
        self.flags = flags
        self.store = store
        self.clock = clock
        self.windows: dict[str, Window] = {name: Window() for name in routes.routes}
        self._generation = flags.state.generation

    def observe(self, endpoint: str, *, ok: bool, seconds: float) -> None:
        """One Go-served request's outcome."""
        self.windows[endpoint].requests.append((self.clock(), ok, seconds))

    def observe_parity(self, endpoint: str, *, matched: bool) -> None:
        self.windows[endpoint].comparisons.append((self.clock(), matched))

    def check(self, endpoint: str, policy: GuardPolicy, now: float) -> Check:
        window = self.windows[endpoint]
        window.prune(now - policy.window_seconds)
        requests = len(window.requests)
        reasons = []
        if requests >= policy.min_requests:
            failures = sum(1 for _, ok, _ in window.requests if not ok)
            ratio = failures / requests
            if ratio > policy.max_error_ratio:
                reasons.append(
                    f"go error ratio {ratio:.2f} > {policy.max_error_ratio} "
                    f"({failures}/{requests} in {policy.window_seconds:g} s)"
                )
            if policy.max_p99_seconds is not None:
                durations = sorted(seconds for _, _, seconds in window.requests)
                p99 = durations[min(len(durations) - 1, int(0.99 * len(durations)))]
                if p99 > policy.max_p99_seconds:
                    reasons.append(f"go p99 {p99:.3f} s > {policy.max_p99_seconds} s")
        comparisons = len(window.comparisons)
        if comparisons >= MIN_PARITY_SAMPLES:
            mismatched = sum(1 for _, matched in window.comparisons if not matched)
            if mismatched / comparisons > policy.max_parity_failure_ratio:
                reasons.append(f"parity failing in {mismatched}/{comparisons} comparisons")
        if reasons:
            return Check(endpoint, FAILING, "; ".join(reasons), requests)
        if requests < policy.min_requests and comparisons < MIN_PARITY_SAMPLES:
            return Check(endpoint, HOLD, f"{requests} go requests in the window", requests)
        return Check(endpoint, OK, "", requests)

    def evaluate(self) -> list[Check]:
        """Check every endpoint Go serves; return the checks that call for a rollback now."""
        now = self.clock()
        if self.flags.state.generation != self._generation:
            self._generation = self.flags.state.generation
            for window in self.windows.values():  # an operator decided: judge afresh
                window.requests.clear()
                window.comparisons.clear()
                window.failing_checks = 0
        trips = []
        for name, route in self.routes.routes.items():
            policy = route.guard
            if route.go_only or not policy.enabled or not self._go_serves(name):
                continue
            check = self.check(name, policy, now)
            window = self.windows[name]
            if check.status != FAILING:
                window.failing_checks = 0
                continue
            window.failing_checks += 1
            if window.failing_checks >= policy.trip_after:
                trips.append(check)
                window.requests.clear()
                window.comparisons.clear()
                window.failing_checks = 0
        return trips

    def _go_serves(self, endpoint: str) -> bool:
        effective = self.flags.effective(endpoint)
        return effective.pinned_by is None and (
            effective.flag.serve == "go" or bool(effective.flag.percent)
        )

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds for the worker's whole life (errors are logged)."""
        while True:
            await asyncio.sleep(interval)
            try:
                for check in self.evaluate():
                    await self.roll_back(check)
            except Exception:
                log.exception("guard check failed; retrying at the next interval")

    async def roll_back(self, check: Check) -> None:
        reason = f"guard: {check.reason}"
        try:
            changes = await asyncio.to_thread(
                self.store.rollback, [check.endpoint], actor="guard", reason=reason
            )
        except (ShimError, OSError) as exc:
            log.error("guard could not roll %s back: %s", check.endpoint, exc)
            return
        if changes:
            metrics.GUARD_ROLLBACKS.labels(check.endpoint).inc()
            log.warning("guard rolled %s back to rust: %s", check.endpoint, check.reason)
