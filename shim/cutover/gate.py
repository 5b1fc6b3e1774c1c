"""The parity gate: moving traffic towards Go needs a recent PASS verdict.

Serving `go`, or a higher canary `percent`, is refused unless the endpoint's parity verdict
is PASS and its newest comparison is recent; `force` overrides and the audit record says
so. Moving traffic back towards Rust is never gated. `SHIM_PARITY_GATE=false` turns the gate
off for a deployment — the deployment's setting, which the running workers publish, not the
environment of whoever types a command. CLI and admin API both change flags through
`gated_set`, and every audit record of a move towards Go says what the gate decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shim.cutover.flag_state import Change, Flag, Unchanged
from shim.cutover.flags import FlagStore
from shim.cutover.store import Evidence
from shim.errors import GateClosed
from shim.parity.verdicts import PASS, Verdict, judge
from shim.settings import Settings
from shim.types import Backend


def go_share(flag: Flag) -> int:
    """Percent of an endpoint's callers that Go serves under `flag`."""
    if flag.percent is not None:
        return flag.percent
    return 100 if flag.serve == "go" else 0


@dataclass
class GateDecision:
    """What the gate says about one proposed change, and the evidence."""

    endpoint: str
    current: Flag
    proposed: Flag
    towards_go: bool
    allowed: bool
    reason: str
    verdict: Verdict | None = None
    warnings: list[str] = field(default_factory=list)
    gate_off_by: str | None = None  # the setting that turned the gate off, when it was off

    def record(self, *, forced: bool) -> dict[str, Any] | None:
        """What the audit trail keeps of this decision (None: not a move towards Go)."""
        if not self.towards_go:
            return None
        record: dict[str, Any] = {
            "decision": "off" if self.gate_off_by else "forced" if forced else "passed"
        }
        if self.gate_off_by:
            record["by"] = self.gate_off_by
        if self.verdict is not None:
            record["verdict"] = self.verdict.verdict
            record["samples"] = self.verdict.samples
        return record

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "current": self.current.settings(),
            "proposed": self.proposed.settings(),
            "towards_go": self.towards_go,
            "allowed": self.allowed,
            "reason": self.reason,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "warnings": self.warnings,
        }


def evaluate(
    settings: Settings,
    store: FlagStore,
    parity: Evidence,
    endpoint: str,
    current: Flag,
    proposed: Flag,
    *,
    now: float | None = None,
    gate_setting: str = "SHIM_PARITY_GATE=false",
) -> GateDecision:
    """Judge a proposed change against the endpoint's parity evidence.

    `gate_setting` names where `settings.parity_gate` came from, for the audit record.
    """
    route = store.routes[endpoint]
    towards = not route.go_only and go_share(proposed) > go_share(current)
    decision = GateDecision(endpoint, current, proposed, towards, True, "")
    if route.shadowable:
        records = [
            r
            for r in parity.samples(window_seconds=settings.parity_window_hours * 3600)
            if r.get("endpoint") == endpoint
        ]
        decision.verdict = judge(route, records)
        last = decision.verdict.last_sample
        age_hours = ((now or time.time()) - last) / 3600 if last else None
        if last is None:
            decision.warnings.append(
                f"no parity data for {endpoint}: turn shadow on "
                f"(shim flags set {endpoint} {current.serve} --shadow) or run "
                f"`shim parity probe {endpoint} --record`"
            )
        elif age_hours is not None and age_hours > settings.parity_gate_max_age_hours:
            decision.warnings.append(
                f"the newest comparison is {age_hours:.1f} h old (stale after "
                f"{settings.parity_gate_max_age_hours:g} h)"
            )
    if not towards:
        decision.reason = "moves no traffic towards Go: never gated"
        return decision
    if not settings.parity_gate:
        decision.reason = f"parity gate is off ({gate_setting})"
        decision.gate_off_by = gate_setting
        return decision
    verdict = decision.verdict
    if verdict is not None and verdict.verdict == PASS and not decision.warnings:
        decision.reason = f"parity {verdict.headline()}"
        return decision
    evidence = verdict.headline() if verdict else "no parity verdict (not shadowable)"
    decision.allowed = False
    decision.reason = (
        f"{endpoint}: moving traffic towards Go needs a recent PASS parity verdict; it has "
        f"{evidence}"
        + (f" ({decision.warnings[0]})" if decision.warnings else "")
        + ". Gather evidence with shadow traffic or a recorded probe, or override with "
        '--force ("force": true in the API), which the audit trail records'
    )
    return decision


def gated_set(
    settings: Settings,
    store: FlagStore,
    parity: Evidence,
    endpoint: str,
    *,
    serve: Backend | None,
    shadow: bool | None,
    percent: int | Unchanged | None,
    actor: str,
    reason: str | None,
    force: bool = False,
    dry_run: bool = False,
    gate_setting: str = "SHIM_PARITY_GATE=false",
    expected_generation: int | None = None,
) -> tuple[GateDecision, Change | None]:
    """Check the gate, then (unless `dry_run`) write the change. GateClosed when refused;
    Conflict when `expected_generation` is given and the state has moved from it."""
    # A stale change is refused before the gate is asked: its evidence was shown for a state
    # that is gone. The store checks again under its lock.
    store.expect(store.read_or_last_good()[0], expected_generation, endpoint)
    current, proposed = store.plan(endpoint, serve=serve, shadow=shadow, percent=percent)
    decision = evaluate(
        settings, store, parity, endpoint, current, proposed, gate_setting=gate_setting
    )
    if dry_run:
        return decision, None
    if not decision.allowed and not force:
        raise GateClosed(decision.reason)
    forced = not decision.allowed
    change = store.set(
        endpoint,
        serve=serve,
        shadow=shadow,
        percent=percent,
        actor=actor,
        reason=reason,
        forced=forced,
        gate=decision.record(forced=forced),
        expected_generation=expected_generation,
    )
    return decision, change
