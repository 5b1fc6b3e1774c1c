"""What the operator page reads, in a thread: the only I/O of the page.

The flag state and the guard come from this worker's memory; the audit trail and the parity
samples from the stores, re-read only when the store says they changed (`audit_identity`,
`Evidence.identity`: a page polls every second); the request split from this worker's
snapshots of `shim_requests_total`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shim import metrics
from shim.errors import FlagStoreUnavailable
from shim.ops.ui_view import Inputs
from shim.ops.views import flags_view, parity_view

if TYPE_CHECKING:
    from shim.ops.admin import AdminContext

SPLIT_WINDOW_SECONDS = 60.0


@dataclass
class Reader:
    """Reads the page's inputs; the audit trail and the parity samples are re-read only when
    their files changed (a page polls every second; 10,000 audit lines take ~15 ms)."""

    context: AdminContext
    _audit: tuple[object, list[dict[str, Any]]] = (None, [])
    _parity: tuple[object, list[dict[str, Any]]] = (None, [])
    _counts: deque[tuple[float, dict[tuple[str, ...], float]]] = field(default_factory=deque)

    def audit(self) -> list[dict[str, Any]]:
        """The flag store's audit trail, oldest first, read again only when the store says
        it changed (`audit_identity`); while the store cannot be reached, the last one read."""
        backend = self.context.store.backend
        try:
            identity = backend.audit_identity()
            if identity != self._audit[0]:
                self._audit = (identity, backend.audit().records)
        except FlagStoreUnavailable:
            pass  # etcd away: the page shows the trail it last read
        return self._audit[1]

    def parity_records(self) -> list[dict[str, Any]]:
        identity = self.context.parity.identity()
        if identity != self._parity[0]:
            window = self.context.settings.parity_window_hours * 3600
            self._parity = (identity, self.context.parity.samples(window_seconds=window))
        return self._parity[1]

    def requests(self) -> tuple[dict[tuple[str, ...], float], float | None]:
        """Requests by (endpoint, backend) over the last minute, from the snapshots this
        worker took of `shim_requests_total`; since start until it has one a minute old."""
        now = time.monotonic()
        counts = metrics.totals("shim_requests_total", ("endpoint", "backend"))
        self._counts.append((now, counts))
        while len(self._counts) > 1 and self._counts[1][0] <= now - SPLIT_WINDOW_SECONDS:
            self._counts.popleft()
        then, old = self._counts[0]
        if now - then < 5:
            return counts, None
        return {k: v - old.get(k, 0.0) for k, v in counts.items()}, now - then

    def read(self, guard: dict[str, tuple[str, str]]) -> Inputs:
        context = self.context
        metrics.flush()
        workers = context.workers.live()
        records = self.parity_records()
        requests, seconds = self.requests()
        return Inputs(
            flags=flags_view(
                context.flags.state,
                context.routes,
                context.store.pins,
                workers,
                load_errors=context.flags.load_errors,
            ),
            parity=parity_view(
                context.routes, records, window_hours=context.settings.parity_window_hours
            ),
            parity_records=records,
            audit=self.audit(),
            workers=workers,
            requests=requests,
            split_seconds=seconds,
            fallbacks=metrics.totals("shim_fallbacks_total", ("endpoint",)),
            guard=guard,
        )


def guard_states(context: AdminContext) -> dict[str, tuple[str, str]]:
    """This worker's guard, per endpoint (on the loop: the guard's windows live there)."""
    guard, states = context.guard, {}
    for name, route in context.routes.routes.items():
        flag = context.flags.effective(name).flag
        if route.go_only or not route.guard.enabled:
            states[name] = ("off", "disabled for this endpoint")
        elif flag.serve != "go" and not flag.percent:
            states[name] = ("idle", "watches only Go-served traffic")
        elif guard is None:
            states[name] = ("on", "")
        else:
            check = guard.check(name, route.guard, guard.clock())
            states[name] = (check.status, check.reason)
    return states
