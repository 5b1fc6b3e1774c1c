"""The flag store interface: what the flag policy (`flags.FlagStore`, `gate`, `guard`,
all in this package) and the operator's surface (audit view, metrics) need from wherever the state
lives, and nothing more: no layer above it names a file.

Two implementations: the state directory of one host (`file_store.FileBackend`, with the
workers' status files of `workers.WorkerRegistry` and the parity files of
`shim.parity.verdicts.ParityStore`) and etcd for a fleet (`etcd_store`, `etcd_fleet`);
`fleet.open_stores` picks one from the settings. Policy — checks, pins, the gate,
plans, recovery of a corrupt state — stays above this line and is the same for both;
tests/test_flag_store_conformance.py holds both implementations to one behaviour.

A commit is compare-and-swap: it lands only when the stored generation is still
`expected`, and the new state and its audit records land in the same atomic step, so there
is no change without an audit record and no audit record without a change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shim.cutover.flag_state import FlagState
    from shim.cutover.flag_view import FlagView
    from shim.cutover.workers import Applied, WorkerStatus
    from shim.jsonl import Lines


class StaleGeneration(Exception):
    """A commit computed from a generation the store has moved past (retry or refuse)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the flag state is at generation {current}")
        self.current = current


class FlagBackend(Protocol):
    """Where the flag state and its audit trail live."""

    kind: str  # "file" or "etcd", for logs, readyz and metrics

    def describe(self) -> str:
        """Where the state is, for operators (`state /srv/state/flags.json`)."""
        ...

    def read(self) -> FlagState:
        """The current state; FlagStateError when it is unusable, FlagStoreUnavailable when
        the store cannot be reached."""
        ...

    def commit(
        self, state: FlagState, records: Sequence[Mapping[str, Any]], *, expected: int | None
    ) -> None:
        """Store `state` and append `records` to the audit in one atomic step, only if the
        stored generation is `expected` (None: unconditionally, to repair a corrupt state).
        StaleGeneration otherwise."""
        ...

    def audit(self, endpoint: str | None = None) -> Lines:
        """The audit trail (of one endpoint), oldest first, and how much was unreadable."""
        ...

    def audit_identity(self) -> object:
        """A cheap token that changes whenever the audit trail does (file: two `stat`s;
        etcd: one keys-only range, no values), so a reader that polls (the operator page)
        re-reads the trail only when it changed."""
        ...

    def describe_audit(self) -> str:
        """Where the audit trail is, for operators (`/srv/state/audit.jsonl`)."""
        ...

    def keep_aside(self) -> str | None:
        """Move an unusable state aside before a repair; its new name, or None if absent."""
        ...

    def last_good_copy(self) -> FlagState | None:
        """The copy kept at every write (or cached from the store), when valid."""
        ...

    def identity(self) -> object:
        """A cheap token that changes with the state: the file's `stat`, etcd's applied
        revision (no I/O). `FlagView.refresh` reloads when it differs."""
        ...

    async def follow(self, view: FlagView) -> None:
        """Keep `view` on the newest state for the worker's whole life (never returns)."""
        ...

    def status(self) -> str:
        """ "ok", or "stale" when this process cannot currently reach the store."""
        ...


class Acknowledgements(Protocol):
    """Which generation each live worker serves (of one host, or of the whole fleet)."""

    host: str

    def publish(self, status: WorkerStatus) -> None: ...

    def remove(self, pid: int) -> None: ...

    def live(self) -> list[WorkerStatus]: ...

    def applied(self, generation: int) -> Applied: ...

    def wait_applied(self, generation: int, *, within: float) -> Applied: ...

    async def wait_applied_async(self, generation: int, *, within: float) -> Applied: ...


class Evidence(Protocol):
    """Parity samples, as the gate, `shim parity` and `GET /_shim/parity` judge them."""

    unreadable: int

    def samples(self, *, window_seconds: float) -> list[dict[str, Any]]: ...

    def identity(self) -> object:
        """A cheap token that changes when `samples` may have (no sample is read), so a
        reader that polls (the operator page) reads them again only then."""
        ...
