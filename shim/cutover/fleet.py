"""Opens the flag store a deployment is configured with (`SHIM_FLAG_STORE`): the one place
that knows both implementations of `shim.cutover.store`, and the one way to open a store from the
settings (`open_stores`).

`file` (default): one host's SHIM_STATE_DIR, as always. `etcd`: every instance pointed at
the same etcd and prefix shares flags, audit, acknowledgements and parity evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from shim.cutover.file_store import FileBackend
from shim.cutover.flag_state import (
    Change,
    FlagState,
    audit_record,
    resolve,
    state_document,
    state_from_document,
)
from shim.cutover.flags import FlagStore, served_by
from shim.cutover.store import Acknowledgements, Evidence, FlagBackend
from shim.cutover.workers import WorkerRegistry
from shim.errors import InvalidValue
from shim.parity.verdicts import ParityStore
from shim.routes import RouteTable
from shim.settings import Settings
from shim.timestamps import iso_utc
from shim.types import Backend


@dataclass(frozen=True, slots=True)
class Stores:
    """Everything a worker or an operator's command keeps in the flag store."""

    flags: FlagStore
    workers: Acknowledgements
    parity: Evidence
    local_parity: ParityStore  # where this process's own samples are appended
    close: Callable[[], None] = lambda: None  # the connections it holds, if any


def open_stores(
    settings: Settings, routes: RouteTable, pins: Mapping[str, Backend] | None = None
) -> Stores:
    """The stores of `settings.flag_store`; `pins` default to the settings' own."""
    pins = settings.pin if pins is None else pins
    local_workers = WorkerRegistry(settings.state_dir)
    local_parity = ParityStore(settings.state_dir)
    if settings.flag_store == "file":
        backend: FlagBackend = FileBackend(settings.state_dir, routes)
        flags = FlagStore(backend, routes, pins, served=served_by(local_workers, routes))
        return Stores(flags, local_workers, local_parity, local_parity)
    from shim.cutover.etcd import Etcd
    from shim.cutover.etcd_fleet import EtcdEvidence, EtcdRegistry, instance_name
    from shim.cutover.etcd_store import EtcdBackend

    config = settings.etcd
    etcd = Etcd(
        config.endpoints.split(","),
        username=config.username,
        password=config.password.get_secret_value() if config.password else None,
        ca_file=config.ca_file,
    )
    registry = EtcdRegistry(etcd, config.prefix, local_workers)
    backend = EtcdBackend(etcd, config.prefix, routes, settings.state_dir)
    flags = FlagStore(backend, routes, pins, served=served_by(registry, routes))
    evidence = EtcdEvidence(etcd, config.prefix, local_parity, instance_name(settings.port))
    return Stores(flags, registry, evidence, local_parity, etcd.close)


EXPORT_VERSION = 1


def export_document(store: FlagStore) -> dict[str, Any]:
    """A store's flag state and audit trail, to move them into another store."""
    return {
        "export_version": EXPORT_VERSION,
        "from": store.backend.describe(),
        "state": state_document(store.read()),
        "audit": store.backend.audit().records,
    }


def import_document(
    store: FlagStore, document: Any, *, actor: str, reason: str | None = None
) -> int:
    """Write an export's flags into `store` as one audited change; its history comes along
    (before the import's own records). Returns the new generation."""
    if not isinstance(document, dict) or document.get("export_version") != EXPORT_VERSION:
        raise InvalidValue("not an export of `shim flags export` (no export_version 1)")
    imported = state_from_document(document.get("state"), store.routes)
    history = [r for r in document.get("audit") or [] if isinstance(r, dict)]
    current = store.read()
    new = FlagState(max(current.generation, imported.generation) + 1, imported.flags)
    records = history[-MAX_IMPORTED_HISTORY:]
    for name in sorted(set(current.flags) | set(imported.flags)):
        before = resolve(current, store.routes, store.pins, name).flag
        after = resolve(new, store.routes, store.pins, name).flag
        if before.settings() != after.settings():
            record = audit_record(
                Change(
                    name,
                    before,
                    replace(after, changed_at=iso_utc(), actor=actor, reason=reason),
                    new.generation,
                )
            )
            records.append({**record, "imported_from": document.get("from")})
    store.backend.commit(new, records, expected=current.generation)
    return new.generation


MAX_IMPORTED_HISTORY = 900  # one transaction's worth of etcd operations stays modest
