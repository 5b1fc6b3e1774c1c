"""Views shared by every operator surface: the JSON admin API, the CLI and the operator page.

Each builder is pure: it takes what the caller has already read (the flag state, the route
table, the pins, the live workers, the parity samples, the audit records) and returns plain
dicts, so one document is built one way whichever surface shows it, and a test needs no
server. Reading the files stays with the callers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from shim.cutover.flag_state import FlagState, pin_conflicts, resolve
from shim.cutover.workers import WorkerStatus
from shim.parity.verdicts import verdicts
from shim.routes import RouteTable
from shim.types import Backend

AUDIT_PAGE = 50


def flags_view(
    state: FlagState,
    routes: RouteTable,
    pins: Mapping[str, Backend],
    workers: Sequence[WorkerStatus],
    *,
    worker: int | None = None,
    load_errors: int = 0,
) -> dict[str, Any]:
    """Every endpoint's flag in force, the generation, and which workers serve it
    (`GET /_shim/flags`; `worker` is the pid that answered)."""
    endpoints = {}
    for name, route in routes.routes.items():
        effective = resolve(state, routes, pins, name)
        endpoints[name] = {
            **effective.flag.settings(),
            "source": effective.source,
            "pinned_by": effective.pinned_by,
            "go_only": route.go_only,
            "changed_at": effective.flag.changed_at,
            "actor": effective.flag.actor,
            "reason": effective.flag.reason,
        }
    return {
        "generation": state.generation,
        "worker": worker,
        "load_errors": load_errors,
        "workers": [
            {
                "pid": w.pid,
                "generation": w.generation,
                "heartbeat_age_s": round(w.age, 2),
                "applied": w.generation >= state.generation,
            }
            for w in workers
        ],
        "endpoints": endpoints,
        "warnings": pin_conflicts(state, routes, pins),
    }


def parity_view(
    routes: RouteTable, records: Iterable[Mapping[str, Any]], *, window_hours: float
) -> dict[str, Any]:
    """Every shadowable endpoint's verdict over the window (`GET /_shim/parity`)."""
    return {
        "window_hours": window_hours,
        "endpoints": {name: v.to_dict() for name, v in verdicts(routes, records).items()},
    }


class AuditEntry(TypedDict):
    """One audit record as the surfaces show it, with a stable anchor for a link."""

    id: str
    time: str
    endpoint: str
    generation: int
    before: dict[str, Any]
    after: dict[str, Any]
    actor: str
    reason: str
    forced: bool
    gate: dict[str, Any] | None


def audit_view(
    records: Sequence[Mapping[str, Any]],
    *,
    endpoint: str | None = None,
    offset: int = 0,
    limit: int = AUDIT_PAGE,
) -> dict[str, Any]:
    """A page of the audit trail, newest first, optionally of one endpoint.

    `records` are oldest first, as `FlagBackend.audit` returns them. Only the page is copied,
    so 10,000 records cost a filter and a slice.
    """
    chosen = records if endpoint is None else [r for r in records if r["endpoint"] == endpoint]
    total = len(chosen)
    offset = max(0, min(offset, max(0, total - 1)))
    stop = total - offset
    page = [audit_entry(r) for r in reversed(chosen[max(0, stop - limit) : stop])]
    return {"total": total, "offset": offset, "limit": limit, "endpoint": endpoint, "entries": page}


def audit_entry(record: Mapping[str, Any]) -> AuditEntry:
    gate = record.get("gate")
    return AuditEntry(
        id=f"g{record['generation']}-{record['endpoint']}",
        time=str(record.get("time") or ""),
        endpoint=record["endpoint"],
        generation=record["generation"],
        before=dict(record["before"]),
        after=dict(record["after"]),
        actor=str(record.get("actor") or "unknown"),
        reason=str(record.get("reason") or ""),
        forced=bool(record.get("forced")),
        gate=dict(gate) if isinstance(gate, dict) else None,
    )


def last_changes(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The generation of each endpoint's newest audited change (for `applied by N/N`)."""
    newest: dict[str, int] = {}
    for record in records:
        newest[record["endpoint"]] = record["generation"]
    return newest


def describe(settings: Mapping[str, Any]) -> str:
    """`go+shadow+30% go`: a flag's settings in one word, as the CLI and the page write it."""
    parts = [str(settings["serve"])]
    if settings.get("shadow"):
        parts.append("shadow")
    if settings.get("percent") is not None:
        parts.append(f"{settings['percent']}% go")
    return "+".join(parts)
