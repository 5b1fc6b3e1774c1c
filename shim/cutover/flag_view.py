"""A worker's in-memory view of the flags: what the request path reads, with no I/O.

The view follows the store for the worker's whole life (`FlagBackend.follow`: the file
store polls the file's identity, etcd watches) and applies each new state whole, as one
assignment of new lookup dicts. A state that fails to load is never served: the worker keeps
its last good one (or, starting, the other workers' state or the last good copy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from shim import metrics
from shim.cutover.flag_state import EffectiveFlag, FlagState, resolve
from shim.errors import FlagStateError, FlagStoreUnavailable
from shim.routes import RouteTable
from shim.types import BACKENDS, Backend

if TYPE_CHECKING:
    from shim.cutover.flags import FlagStore

log = logging.getLogger("shim.flags")


class FlagView:
    """A worker's in-memory view of the flags: lookups on the request path do no I/O.

    `watch()` runs for the worker's lifetime and follows the store (`FlagBackend.follow`):
    the file store polls the file's identity, etcd watches. Each new state is applied whole.
    """

    def __init__(
        self,
        store: FlagStore,
        *,
        poll_seconds: float,
        on_apply: Callable[[FlagState], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.on_apply = on_apply
        self.on_error = on_error
        self.state = FlagState()
        self.load_errors = 0
        self._serving: dict[str, Backend] = {}
        self._shadowing: frozenset[str] = frozenset()
        self._canary: dict[str, int] = {}
        self.identity: object = None  # the file's identity, or the etcd revision, applied
        self._applied = False  # whether any state was applied yet
        self._reindex()

    def serving(self, endpoint: str) -> Backend:
        """The backend serving `endpoint` now (a dict lookup)."""
        return self._serving[endpoint]

    def canary(self, endpoint: str) -> int | None:
        """The canary percent sent to Go, when one is set (a dict lookup)."""
        return self._canary.get(endpoint)

    def shadowing(self, endpoint: str) -> bool:
        """Whether `endpoint`'s traffic is mirrored to the other backend now."""
        return endpoint in self._shadowing

    def effective(self, endpoint: str) -> EffectiveFlag:
        return resolve(self.state, self.store.routes, self.store.pins, endpoint)

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the state if it changed (or when `force`d); True when one was applied.

        A store that cannot be reached (etcd down at start-up) counts as a load error: the
        worker starts from the other workers' state or the last good copy it cached.
        """
        identity = self._stat()
        if identity == self.identity and not force:
            return False
        try:
            state = self.store.read()
        except (FlagStateError, FlagStoreUnavailable, OSError) as exc:
            self.load_errors += 1
            if self.on_error:
                self.on_error(exc)
            self.identity = identity  # do not re-read the same bad file every poll
            if self._applied:
                log.error(
                    "flag file not applied, keeping generation %d: %s", self.state.generation, exc
                )
                return False
            # A worker starting (or replaced) while the file is bad: the other workers'
            # state, else the last good copy, never silently the route defaults.
            state, source = self.store.last_good()
            log.error("flag state not applied: %s; starting from the %s", exc, source)
        self.identity = identity
        self.apply(state)
        return True

    def apply(self, state: FlagState) -> None:
        """Serve `state` from now on: one assignment of new lookup dicts, never a half."""
        if state.generation < self.state.generation:
            log.warning(
                "flag state generation went back from %d to %d",
                self.state.generation,
                state.generation,
            )
        self.state = state
        self._applied = True
        self._reindex()
        if self.on_apply:
            self.on_apply(state)

    async def watch(self) -> None:
        """Follow the store for the worker's whole life."""
        await self.store.backend.follow(self)

    def _stat(self) -> object:
        return self.store.backend.identity()

    def _reindex(self) -> None:
        flags = {name: self.effective(name).flag for name in self.store.routes.routes}
        self._serving = {name: flag.serve for name, flag in flags.items()}
        self._canary = {
            name: flag.percent for name, flag in flags.items() if flag.percent is not None
        }
        self._shadowing = frozenset(
            name
            for name, flag in flags.items()
            if flag.shadow and self.store.routes[name].shadowable
        )


def publish_flag_metrics(state: FlagState, routes: RouteTable, pins: dict[str, Backend]) -> None:
    """Publish the flag state this worker now serves (its gauges are in shim.metrics)."""
    metrics.FLAG_GENERATION.set(state.generation)
    for name in routes.routes:
        effective = resolve(state, routes, pins, name)
        for backend in BACKENDS:
            metrics.FLAG_SERVING.labels(name, backend).set(
                1 if effective.flag.serve == backend else 0
            )
        # -1, not an absent series: a multiprocess gauge cannot drop a label set once written.
        percent = effective.flag.percent
        metrics.FLAG_PERCENT.labels(name).set(-1 if percent is None else percent)
        # A 0 before the first rollback, so increase() in the alert sees that rollback too.
        metrics.GUARD_ROLLBACKS.labels(name)
        conflict = bool(
            effective.pinned_by
            and effective.runtime
            and effective.runtime.serve != effective.flag.serve
        )
        metrics.FLAG_PIN_CONFLICT.labels(name).set(1 if conflict else 0)
