"""Which backend serves each endpoint: the flag policy over a store.

`FlagStore` is the policy — checks, pins, plans, recovery of an unusable state — over a
`store.FlagBackend` (`file_store` on one host, `etcd_store` for a fleet;
`fleet.open_stores` opens the configured one). Every write is a compare-and-swap on
the generation it was computed from, retried on a newer state (or refused with 409
`conflict` when the caller named `expected_generation`).

An unusable stored state never locks an operator out: a write over it keeps the bad state
aside (`flags.json.corrupt-<time>`) and starts from the last good state known — what the
running workers serve, else the copy kept at every write, else the route table's defaults —
and says which in its output and audit record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from shim.cutover.flag_state import (
    UNCHANGED,
    Change,
    EffectiveFlag,
    Flag,
    FlagState,
    Recovery,
    Unchanged,
    audit_record,
    pin_variable,
    resolve,
    state_from_document,
)
from shim.cutover.store import Acknowledgements, FlagBackend, StaleGeneration
from shim.errors import (
    Conflict,
    FlagPinned,
    FlagRefused,
    FlagStateError,
    FlagStoreUnavailable,
    UnknownEndpoint,
)
from shim.routes import RouteTable
from shim.timestamps import iso_utc
from shim.types import BACKENDS, Backend

log = logging.getLogger("shim.flags")


ServedStates = Callable[[], list[FlagState]]
"""The states running workers say they serve, for recovery (`served_by`)."""


def served_by(registry: Acknowledgements, routes: RouteTable) -> ServedStates:
    """The flag states that the live workers of `registry` publish with their heartbeat."""

    def states() -> list[FlagState]:
        found = []
        try:
            workers = registry.live()
        except FlagStoreUnavailable:
            return []  # etcd down: the cached copy is the best left
        for worker in workers:
            if worker.state is not None:  # a worker of an older version publishes none
                with contextlib.suppress(FlagStateError):
                    found.append(state_from_document(worker.state, routes))
        return found

    return states


MAX_COMMIT_ATTEMPTS = 50  # concurrent writers each retry on the state the other left


class FlagStore:
    """The flag policy over a store: the only writer of the flag state and its audit."""

    def __init__(
        self,
        backend: FlagBackend,
        routes: RouteTable,
        pins: Mapping[str, Backend],
        *,
        served: ServedStates | None = None,
    ) -> None:
        self.backend = backend
        self.routes = routes
        self.pins = dict(pins)
        self.served = served

    def read(self) -> FlagState:
        """The current state (none stored yet: the empty state at generation 0).

        FlagStateError, naming where it is and how to repair it, when it cannot be used.
        """
        return self.backend.read()

    def last_good(self) -> tuple[FlagState, str]:
        """The best state known when the stored one is unusable, and where it came from."""
        served = self.served() if self.served else []
        if served:
            return max(served, key=lambda state: state.generation), "workers"
        copy = self.backend.last_good_copy()
        if copy is not None:
            return copy, "last good copy"
        log.warning(
            "no last good flag state (no running worker, no valid copy): starting from the "
            "route table's defaults"
        )
        return FlagState(), "route defaults"

    def read_or_last_good(self) -> tuple[FlagState, FlagStateError | None]:
        """The current state, or when it is unusable the last good one and why."""
        try:
            return self.read(), None
        except FlagStateError as exc:
            return self.last_good()[0], exc

    def _read_for_write(self) -> tuple[FlagState, Recovery | None]:
        """The state to change; an unusable one is kept aside first."""
        try:
            return self.read(), None
        except FlagStateError as exc:
            problem = exc.message.split("; ", 1)[0]
        state, source = self.last_good()
        kept_aside = self.backend.keep_aside()
        # Past every generation the workers have seen, so each of them applies the repair.
        served = self.served() if self.served else []
        newest = max([state.generation, *(s.generation for s in served)])
        state = FlagState(newest, state.flags)
        recovery = Recovery(problem, kept_aside, source, state.generation)
        # For the service's log (API, guard) and an operator's terminal alike (the CLI
        # configures no logging: Python prints warnings to stderr).
        log.warning("warning: %s", recovery.summary())
        return state, recovery

    def effective(self, endpoint: str, state: FlagState | None = None) -> EffectiveFlag:
        return resolve(state or self.read(), self.routes, self.pins, endpoint)

    def plan(
        self,
        endpoint: str,
        *,
        serve: Backend | None = None,
        shadow: bool | None = None,
        percent: int | Unchanged | None = UNCHANGED,
    ) -> tuple[Flag, Flag]:
        """The endpoint's flag now and as the change would leave it (nothing written).

        Raises UnknownEndpoint, FlagRefused (Go-only endpoint to rust or canary, a shadow
        that cannot be, a bad percent) or FlagPinned (an environment pin fixes the backend).
        """
        self._check(endpoint, serve, percent, shadow)
        return self._plan(self.read_or_last_good()[0], endpoint, serve, shadow, percent)

    def _plan(
        self,
        state: FlagState,
        endpoint: str,
        serve: Backend | None,
        shadow: bool | None,
        percent: int | Unchanged | None,
    ) -> tuple[Flag, Flag]:
        effective = resolve(state, self.routes, self.pins, endpoint)
        current = effective.runtime or effective.flag
        proposed = Flag(
            serve=serve or current.serve,
            shadow=current.shadow if shadow is None else shadow,
            percent=current.percent if percent is UNCHANGED else percent,
        )
        return current, proposed

    def set(
        self,
        endpoint: str,
        *,
        serve: Backend | None = None,
        shadow: bool | None = None,
        percent: int | Unchanged | None = UNCHANGED,
        actor: str,
        reason: str | None = None,
        forced: bool = False,
        gate: Mapping[str, Any] | None = None,
        expected_generation: int | None = None,
    ) -> Change | None:
        """Change one endpoint's flag (fields left out keep their value); None if no change
        (unless the stored state had to be repaired: a repair is always written).

        Raises as `plan` does, and Conflict when `expected_generation` is given and the
        state has moved past it. The parity gate is not checked here (see `shim.cutover.gate`), but
        its decision is recorded with the change.
        """
        self._check(endpoint, serve, percent, shadow)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            state, recovery = self._read_for_write()
            if expected_generation is not None and recovery is None:
                self.expect(state, expected_generation, endpoint)
            current, proposed = self._plan(state, endpoint, serve, shadow, percent)
            if proposed.settings() == current.settings() and recovery is None:
                return None
            after = replace(proposed, changed_at=iso_utc(), actor=actor, reason=reason)
            try:
                changes = self._commit(
                    state,
                    {endpoint: after},
                    before={endpoint: current},
                    forced=forced,
                    gate=gate,
                    recovery=recovery,
                )
            except StaleGeneration as stale:
                if expected_generation is not None:
                    self.expect(FlagState(stale.current), expected_generation, endpoint)
                continue  # another writer landed first: plan again on its state
            return changes[0]
        raise Conflict(
            f"{MAX_COMMIT_ATTEMPTS} writers in a row changed the flags first; try again",
            generation=state.generation,
        )

    def expect(self, state: FlagState, expected: int | None, endpoint: str | None = None) -> None:
        """Refuse a change computed from another generation than `state`'s, so a form shown
        a minute ago cannot undo a newer change (the endpoint's flag now goes with it)."""
        if expected is not None and state.generation != expected:
            now = (
                resolve(state, self.routes, self.pins, endpoint)
                if endpoint is not None and state.flags
                else None
            )
            raise Conflict(
                f"the flag state is at generation {state.generation}, not {expected}: it "
                "changed since you read it; look at the current state (GET /_shim/flags or "
                "`shim flags`) and send the change again with its generation",
                generation=state.generation,
                expected=expected,
                current=now.flag.settings() if now else None,
            )

    def rollback(
        self,
        endpoints: list[str] | None,
        *,
        actor: str,
        reason: str | None = None,
        expected_generation: int | None = None,
    ) -> list[Change]:
        """Send the named endpoints (all when None) back to rust in one write.

        Go-only endpoints are skipped when none are named and refused when named;
        Conflict as in `set`.
        """
        names = (
            endpoints if endpoints else [n for n, r in self.routes.routes.items() if not r.go_only]
        )
        for name in names:
            self._check(name, "rust", UNCHANGED)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            state, recovery = self._read_for_write()
            if expected_generation is not None and recovery is None:
                self.expect(state, expected_generation)
            before = {n: resolve(state, self.routes, self.pins, n) for n in names}
            updates = {}
            for name, effective in before.items():
                current = effective.runtime or effective.flag
                target = Flag("rust", current.shadow, None, iso_utc(), actor, reason)
                if target.settings() != current.settings():
                    updates[name] = target
            if not updates and recovery is not None:
                # Nothing to move, but the repair is written, and audited like a change.
                updates = {
                    n: replace(
                        e.runtime or e.flag, changed_at=iso_utc(), actor=actor, reason=reason
                    )
                    for n, e in before.items()
                }
            if not updates:
                return []
            prior = {n: before[n].runtime or before[n].flag for n in updates}
            try:
                return self._commit(state, updates, before=prior, recovery=recovery)
            except StaleGeneration as stale:
                if expected_generation is not None:
                    self.expect(FlagState(stale.current), expected_generation)
                continue
        raise Conflict(
            f"{MAX_COMMIT_ATTEMPTS} writers in a row changed the flags first; try again",
            generation=state.generation,
        )

    def _check(
        self, endpoint: str, serve: Backend | None, percent: object, shadow: bool | None = None
    ) -> None:
        if endpoint not in self.routes:
            known = ", ".join(sorted(self.routes.routes))
            raise UnknownEndpoint(f"no endpoint {endpoint!r} in the route table ({known})")
        if serve is not None and serve not in BACKENDS:
            raise FlagRefused(f"serve must be rust or go, not {serve!r}")
        route = self.routes[endpoint]
        if serve == "rust" and route.go_only:
            raise FlagRefused(f"{endpoint} is Go-only: it has no Rust backend to serve it")
        if percent not in (None, UNCHANGED) and route.go_only:
            raise FlagRefused(f"{endpoint} is Go-only: a canary share has nothing to split")
        if shadow and not route.shadowable:
            why = (
                "it is Go-only: there is no other backend to compare with"
                if route.go_only
                else "it is not idempotent (a mirrored request would run twice)"
            )
            raise FlagRefused(f"{endpoint} cannot be shadowed: {why}")
        if percent not in (None, UNCHANGED) and (
            isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100
        ):
            raise FlagRefused("percent must be a whole number from 0 to 100, or absent")
        if endpoint in self.pins and (serve is not None or percent not in (None, UNCHANGED)):
            variable = pin_variable(endpoint)
            raise FlagPinned(
                f"{endpoint} is pinned to {self.pins[endpoint]} by {variable}; remove the pin "
                "(systemd drop-in) and restart to change it at run time",
                variable=variable,
            )

    def _commit(
        self,
        state: FlagState,
        updates: Mapping[str, Flag],
        *,
        before: Mapping[str, Flag],
        forced: bool = False,
        gate: Mapping[str, Any] | None = None,
        recovery: Recovery | None = None,
    ) -> list[Change]:
        new = FlagState(state.generation + 1, {**state.flags, **updates})
        changes = [
            Change(n, before[n], updates[n], new.generation, forced, gate, recovery)
            for n in updates
        ]
        records = [audit_record(change) for change in changes]
        # A repair replaces what could not be read; everything else swaps only the state
        # it was computed from.
        expected = None if recovery is not None else state.generation
        self.backend.commit(new, records, expected=expected)
        return changes


def cli_actor() -> str:
    """Who runs a CLI command, for the audit trail."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER")
    if not user:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    return f"cli:{user}"
