"""The flag state and what decides an endpoint's traffic: pure values, no store.

A `FlagState` is a generation and the endpoints changed at run time; `resolve` says which
flag is in force (precedence: environment pin > stored state > route default). The stored
document (`state_document` / `state_from_document`) and the audit record of a change are
the same for every store (`shim.cutover.file_store`, `shim.cutover.etcd_store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import orjson

from shim.errors import ConfigError, FlagStateError
from shim.routes import RouteTable
from shim.types import BACKENDS, Backend

FORMAT_VERSION = 1


class Unchanged(Enum):
    """A field of a flag change that keeps its value (`None` is a value: no canary)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class Flag:
    """An endpoint's runtime setting, with who changed it last."""

    serve: Backend
    shadow: bool = False
    percent: int | None = None
    changed_at: str | None = None
    actor: str | None = None
    reason: str | None = None

    def settings(self) -> dict[str, Any]:
        return {"serve": self.serve, "shadow": self.shadow, "percent": self.percent}


@dataclass(frozen=True, slots=True)
class FlagState:
    """Everything in the flag store: a generation and the endpoints changed at run time."""

    generation: int = 0
    flags: Mapping[str, Flag] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EffectiveFlag:
    """What actually decides an endpoint's traffic, and why."""

    endpoint: str
    flag: Flag
    source: str  # "pin", "runtime" or "default"
    pinned_by: str | None = None
    runtime: Flag | None = None  # the stored value, also when a pin overrides it


@dataclass(frozen=True, slots=True)
class Recovery:
    """A write that found the stored state unusable, and where it started from instead."""

    problem: str
    kept_aside: str | None  # the bad state's new name, when there was one to keep
    source: str  # "workers", "last good copy" or "route defaults"
    generation: int

    def summary(self) -> str:
        kept = f"kept aside as {self.kept_aside}" if self.kept_aside else "nothing to keep"
        return (
            f"the flag file was not a valid state ({self.problem}); {kept}; started from "
            f"the {self.source} (generation {self.generation})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"problem": self.problem, "kept_aside": self.kept_aside, "from": self.source}


@dataclass(frozen=True, slots=True)
class Change:
    """One audited change of one endpoint."""

    endpoint: str
    before: Flag
    after: Flag
    generation: int
    forced: bool = False
    gate: Mapping[str, Any] | None = None  # the parity gate's decision, for moves to Go
    recovery: Recovery | None = None


def pin_variable(endpoint: str) -> str:
    return f"SHIM_PIN__{endpoint.upper()}"


def resolve(
    state: FlagState, routes: RouteTable, pins: Mapping[str, Backend], endpoint: str
) -> EffectiveFlag:
    """The flag in force for `endpoint`: pin, else runtime state, else the route default."""
    runtime = state.flags.get(endpoint)
    pinned = pins.get(endpoint)
    if pinned is not None:
        base = runtime or Flag(serve=pinned)
        flag = replace(base, serve=pinned, percent=None)
        return EffectiveFlag(endpoint, flag, "pin", pin_variable(endpoint), runtime)
    if runtime is not None:
        return EffectiveFlag(endpoint, runtime, "runtime", None, runtime)
    return EffectiveFlag(endpoint, Flag(serve=routes[endpoint].default), "default")


def pin_conflicts(state: FlagState, routes: RouteTable, pins: Mapping[str, Backend]) -> list[str]:
    """Warnings where a pin overrides a different runtime flag, saying what a restart keeps."""
    warnings = []
    for name in routes.routes:
        effective = resolve(state, routes, pins, name)
        if (
            effective.pinned_by
            and effective.runtime
            and effective.runtime.serve != effective.flag.serve
        ):
            warnings.append(
                f"{name}: the runtime flag says {effective.runtime.serve} but "
                f"{effective.pinned_by}={effective.flag.serve} overrides it; a restart keeps the "
                f"pin ({effective.flag.serve}) until the drop-in is removed"
            )
    return warnings


def check_pins(pins: Mapping[str, Backend], routes: RouteTable) -> None:
    """Pins must name known endpoints and a backend that can serve them (start-up check)."""
    for endpoint, backend in pins.items():
        if endpoint not in routes:
            raise ConfigError(f"pins unknown endpoint {endpoint!r}", key=pin_variable(endpoint))
        if backend == "rust" and routes[endpoint].go_only:
            raise ConfigError(
                f"{endpoint} is Go-only and cannot be pinned to rust", key=pin_variable(endpoint)
            )


def state_document(state: FlagState) -> dict[str, Any]:
    """The stored state's content (and what workers publish as the state they serve)."""
    return {
        "version": FORMAT_VERSION,
        "generation": state.generation,
        "flags": {name: asdict(flag) for name, flag in sorted(state.flags.items())},
    }


def parse_state(raw: bytes, routes: RouteTable) -> FlagState:
    """Parse a stored state; FlagStateError on anything that is not a complete, valid state."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FlagStateError(f"flag file is not a valid state: {exc}") from None
    return state_from_document(document, routes)


def state_from_document(document: Any, routes: RouteTable) -> FlagState:
    """A parsed `state_document`; FlagStateError when it is not a complete, valid state."""
    try:
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format version {document.get('version')!r}")
        generation = document["generation"]
        if not isinstance(generation, int) or generation < 0:
            raise ValueError("generation must be a non-negative integer")
        flags = {}
        for endpoint, spec in document["flags"].items():
            flag = Flag(**spec)
            if flag.serve not in BACKENDS:
                raise ValueError(f"{endpoint}: serve must be rust or go")
            if endpoint in routes:  # an endpoint dropped from the route table is ignored
                flags[endpoint] = flag
        return FlagState(generation, flags)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise FlagStateError(f"flag file is not a valid state: {exc}") from None


def audit_record(change: Change) -> dict[str, Any]:
    """One line of the audit trail."""
    record: dict[str, Any] = {
        "time": change.after.changed_at,
        "endpoint": change.endpoint,
        "before": change.before.settings(),
        "after": change.after.settings(),
        "actor": change.after.actor,
        "reason": change.after.reason,
        "generation": change.generation,
    }
    if change.forced:
        record["forced"] = True
    if change.gate is not None:
        record["gate"] = dict(change.gate)
    if change.recovery is not None:
        record["recovered"] = change.recovery.to_dict()
    return record


def is_audit_record(record: Mapping[str, Any]) -> bool:
    """Garbage that happens to parse as a JSON object is not a change."""
    return (
        isinstance(record.get("endpoint"), str)
        and isinstance(record.get("generation"), int)
        and all(isinstance(record.get(key), dict) for key in ("before", "after"))
    )
