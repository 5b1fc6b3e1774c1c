"""Which backend serves each endpoint: the flag policy, the file store and each worker's view.

`FlagStore` is the policy (checks, pins, plans, recovery) over a `shim.store.FlagBackend`;
every write is a compare-and-swap on the generation it was computed from, retried on a
newer state (or refused with 409 `conflict` when the caller named `expected_generation`).

`FileBackend` keeps the state in one JSON file in SHIM_STATE_DIR. Writers (CLI, admin API)
take an exclusive lock, bump a generation number, write a temp file, fsync and rename it, so
a crash mid-write never leaves a torn file and two writers never lose an update. The file
carries the audit records of its own change, so the change and its audit land in one
rename; they are also appended to `audit.jsonl`, and a record lost to a crash between the
two is read back from the file. Workers poll the file's identity (a `stat`, no read) and
reload it in a thread when it changes; a file that fails to load is never served: the
worker keeps its last good state. Precedence: environment pin > stored state > route default.

A corrupt or unreadable file never locks an operator out: a write over it keeps the bad
file aside (`flags.json.corrupt-<time>`) and starts from the last good state known — what
the running workers serve, else the copy kept at every write (`flags.last-good.json`), else
the route table's defaults — and says which in its output and audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import EllipsisType
from typing import Any

import orjson

from shim.errors import (
    ConfigError,
    Conflict,
    FlagPinned,
    FlagRefused,
    FlagStoreUnavailable,
    ShimError,
    UnknownEndpoint,
)
from shim.jsonl import Lines, append_lines, read_lines
from shim.routes import RouteTable
from shim.store import Acknowledgements, FlagBackend, StaleGeneration
from shim.types import BACKENDS, Backend

log = logging.getLogger("shim.flags")

FLAGS_FILE = "flags.json"
LAST_GOOD_FILE = "flags.last-good.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = "flags.lock"
FORMAT_VERSION = 1
AUDIT_TAIL_BYTES = 64 * 1024  # holds the last change's records many times over


class FlagStateError(ShimError):
    """The flag file exists but cannot be used (corrupt, half-written, wrong format)."""

    code = "flag_state_corrupt"


def repair_hint(path: Path) -> str:
    return (
        f"the workers keep serving their last good flags; any write repairs {path} and keeps "
        "the bad file aside: `shim flags set ENDPOINT rust|go` or `shim rollback` "
        "(see the last good state with `shim flags`)"
    )


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
    """Everything in the flag file: a generation and the endpoints changed at run time."""

    generation: int = 0
    flags: Mapping[str, Flag] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EffectiveFlag:
    """What actually decides an endpoint's traffic, and why."""

    endpoint: str
    flag: Flag
    source: str  # "pin", "runtime" or "default"
    pinned_by: str | None = None
    runtime: Flag | None = None  # the file's value, also when a pin overrides it


@dataclass(frozen=True, slots=True)
class Recovery:
    """A write that found the flag file unusable, and where it started from instead."""

    problem: str
    kept_aside: str | None  # the bad file's new name, when there was a file to keep
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def state_document(state: FlagState) -> dict[str, Any]:
    """The flag file's content (and what workers publish as the state they serve)."""
    return {
        "version": FORMAT_VERSION,
        "generation": state.generation,
        "flags": {name: asdict(flag) for name, flag in sorted(state.flags.items())},
    }


def parse_state(raw: bytes, routes: RouteTable) -> FlagState:
    """Parse the flag file; FlagStateError on anything that is not a complete, valid state."""
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


class FileBackend:
    """The flag state of one host: `flags.json`, `flags.last-good.json` and `audit.jsonl`
    in SHIM_STATE_DIR (the `shim.store.FlagBackend` of a single-host deployment)."""

    kind = "file"

    def __init__(self, state_dir: Path, routes: RouteTable) -> None:
        self.state_dir = state_dir
        self.routes = routes
        self.path = state_dir / FLAGS_FILE
        self.last_good_path = state_dir / LAST_GOOD_FILE
        self.audit_path = state_dir / AUDIT_FILE

    def describe(self) -> str:
        return f"state {self.path}"

    def status(self) -> str:
        return "ok"  # a local file is never out of reach; a bad one is a load error

    def read(self) -> FlagState:
        return self._read()[0]

    def _read(self) -> tuple[FlagState, list[dict[str, Any]]]:
        """The state and the audit records it carries of its own change."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return FlagState(), []
        except OSError as exc:
            raise FlagStateError(
                f"{self.path} cannot be read ({exc.strerror}); {repair_hint(self.path)}"
            ) from None
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FlagStateError(
                f"{self.path}: flag file is not a valid state: {exc}; {repair_hint(self.path)}"
            ) from None
        try:
            state = state_from_document(document, self.routes)
        except FlagStateError as exc:
            raise FlagStateError(f"{self.path}: {exc.message}; {repair_hint(self.path)}") from None
        carried = document.get("audit")
        records = [r for r in carried if _is_audit_record(r)] if isinstance(carried, list) else []
        return state, records

    def commit(
        self, state: FlagState, records: Sequence[Mapping[str, Any]], *, expected: int | None
    ) -> None:
        with self._locked():
            if expected is not None:
                current, carried = self._read()
                if current.generation != expected:
                    raise StaleGeneration(current.generation)
                self._append_missing(carried)  # a crash lost them from audit.jsonl
            document = {**state_document(state), "audit": list(records)}
            data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
            atomic_write(self.path, data)
            atomic_write(self.last_good_path, data)  # what a repair starts from, workers gone
            lines = b"".join(orjson.dumps(record) + b"\n" for record in records)
            append_lines(self.audit_path, lines, sync=True)

    def _logged_generations(self) -> set[object]:
        """Generations in the audit file's tail (a carried record is the newest change)."""
        try:
            with self.audit_path.open("rb") as file:
                start = max(0, file.seek(0, os.SEEK_END) - AUDIT_TAIL_BYTES)
                file.seek(start)
                tail = file.read().splitlines()[1 if start else 0 :]  # a first line may be cut
        except FileNotFoundError:
            return set()
        generations: set[object] = set()
        for line in tail:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                generations.add(orjson.loads(line).get("generation"))
        return generations

    def _append_missing(self, carried: list[dict[str, Any]]) -> None:
        logged = self._logged_generations()
        missing = [r for r in carried if r.get("generation") not in logged]
        if missing:
            log.warning("audit.jsonl lacked generation %d: appended", missing[0]["generation"])
            append_lines(
                self.audit_path, b"".join(orjson.dumps(r) + b"\n" for r in missing), sync=True
            )

    def audit(self, endpoint: str | None = None) -> Lines:
        lines = read_lines(self.audit_path)
        valid = [r for r in lines.records if _is_audit_record(r)]
        unreadable = lines.unreadable + len(lines.records) - len(valid)
        with contextlib.suppress(FlagStateError):
            logged = {r["generation"] for r in valid[-50:]}  # valid: each has one
            valid += [r for r in self._read()[1] if r["generation"] not in logged]
        chosen = [r for r in valid if endpoint is None or r["endpoint"] == endpoint]
        return Lines(chosen, unreadable)

    def keep_aside(self) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            stamp = now_iso().replace(":", "")
            aside = self.path.with_name(f"{FLAGS_FILE}.corrupt-{stamp}")
            os.replace(self.path, aside)
            return str(aside)
        return None

    def last_good_copy(self) -> FlagState | None:
        try:
            return parse_state(self.last_good_path.read_bytes(), self.routes)
        except (OSError, FlagStateError):
            return None

    def identity(self) -> tuple[int, int, int] | None:
        """The file's identity (a `stat`, no read): what a worker polls."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def follow(self, view: FlagView) -> None:
        """Poll for the worker's whole life: an error is logged and the next poll retries,
        because a dead watcher would leave this worker on an old generation for good."""
        while True:
            await asyncio.sleep(view.poll_seconds)
            try:
                if self.identity() != view.identity:
                    await asyncio.to_thread(view.refresh)
            except Exception:
                log.exception("flag watcher: refresh failed; retrying at the next poll")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


MAX_COMMIT_ATTEMPTS = 50  # concurrent writers each retry on the state the other left


class FlagStore:
    """The flag policy over a store: the only writer of the flag state and its audit."""

    def __init__(
        self,
        state_dir: Path,
        routes: RouteTable,
        pins: Mapping[str, Backend],
        *,
        served: ServedStates | None = None,
        backend: FlagBackend | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.routes = routes
        self.pins = dict(pins)
        self.served = served
        self.backend: FlagBackend = backend or FileBackend(state_dir, routes)

    def read(self) -> FlagState:
        """The current state (an absent file is the empty state at generation 0).

        FlagStateError, naming the file and how to repair it, when it cannot be used.
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
        """The current state, or when the file is unusable the last good one and why."""
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
        percent: int | EllipsisType | None = ...,
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
        percent: int | EllipsisType | None,
    ) -> tuple[Flag, Flag]:
        effective = resolve(state, self.routes, self.pins, endpoint)
        current = effective.runtime or effective.flag
        proposed = Flag(
            serve=serve or current.serve,
            shadow=current.shadow if shadow is None else shadow,
            percent=current.percent if isinstance(percent, EllipsisType) else percent,
        )
        return current, proposed

    def set(
        self,
        endpoint: str,
        *,
        serve: Backend | None = None,
        shadow: bool | None = None,
        percent: int | EllipsisType | None = ...,
        actor: str,
        reason: str | None = None,
        forced: bool = False,
        gate: Mapping[str, Any] | None = None,
        expected_generation: int | None = None,
    ) -> Change | None:
        """Change one endpoint's flag (fields left out keep their value); None if no change
        (unless the file had to be repaired: a repair is always written).

        Raises as `plan` does, and Conflict when `expected_generation` is given and the
        state has moved past it. The parity gate is not checked here (see `shim.gate`), but
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
            after = replace(proposed, changed_at=now_iso(), actor=actor, reason=reason)
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
            known = endpoint is not None and state.flags
            now = resolve(state, self.routes, self.pins, endpoint) if known else None
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
            self._check(name, "rust", ...)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            state, recovery = self._read_for_write()
            if expected_generation is not None and recovery is None:
                self.expect(state, expected_generation)
            before = {n: resolve(state, self.routes, self.pins, n) for n in names}
            updates = {}
            for name, effective in before.items():
                current = effective.runtime or effective.flag
                target = Flag("rust", current.shadow, None, now_iso(), actor, reason)
                if target.settings() != current.settings():
                    updates[name] = target
            if not updates and recovery is not None:
                # Nothing to move, but the repair is written, and audited like a change.
                updates = {
                    n: replace(
                        e.runtime or e.flag, changed_at=now_iso(), actor=actor, reason=reason
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
        if percent not in (None, ...) and route.go_only:
            raise FlagRefused(f"{endpoint} is Go-only: a canary share has nothing to split")
        if shadow and not route.shadowable:
            why = (
                "it is Go-only: there is no other backend to compare with"
                if route.go_only
                else "it is not idempotent (a mirrored request would run twice)"
            )
            raise FlagRefused(f"{endpoint} cannot be shadowed: {why}")
        if percent not in (None, ...) and (
            isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100
        ):
            raise FlagRefused("percent must be a whole number from 0 to 100, or absent")
        if endpoint in self.pins and (serve is not None or percent not in (None, ...)):
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


def audit_record(change: Change) -> dict[str, Any]:
    """One line of `audit.jsonl`."""
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


def read_audit(state_dir: Path, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The audit trail, oldest first (torn or garbage lines are skipped)."""
    return audit_lines(state_dir, endpoint).records


def audit_lines(state_dir: Path, endpoint: str | None = None, *, start: int = 0) -> Lines:
    """The file store's audit trail and how many of its lines could not be read (from
    `start`: only what was appended since a previous read's `end`)."""
    lines = read_lines(state_dir / AUDIT_FILE, start=start)
    valid = [r for r in lines.records if _is_audit_record(r)]
    unreadable = lines.unreadable + len(lines.records) - len(valid)
    chosen = [r for r in valid if endpoint is None or r["endpoint"] == endpoint]
    return Lines(chosen, unreadable, lines.end)


def _is_audit_record(record: Mapping[str, Any]) -> bool:
    """Garbage that happens to parse as a JSON object is not a change."""
    return (
        isinstance(record.get("endpoint"), str)
        and isinstance(record.get("generation"), int)
        and all(isinstance(record.get(key), dict) for key in ("before", "after"))
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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


def cli_actor() -> str:
    """Who runs a CLI command, for the audit trail."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER")
    if not user:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    return f"cli:{user}"


def check_pins(pins: Mapping[str, Backend], routes: RouteTable) -> None:
    """Pins must name known endpoints and a backend that can serve them (start-up check)."""
    for endpoint, backend in pins.items():
        if endpoint not in routes:
            raise ConfigError(f"pins unknown endpoint {endpoint!r}", key=pin_variable(endpoint))
        if backend == "rust" and routes[endpoint].go_only:
            raise ConfigError(
                f"{endpoint} is Go-only and cannot be pinned to rust", key=pin_variable(endpoint)
            )
