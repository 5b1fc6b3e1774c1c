"""The etcd store's own mechanics, in one process against a real etcd: a watch from a
compacted revision, and parity evidence shared between instances."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from shim.cutover import etcd_store
from shim.cutover.etcd import Etcd, b64, prefix_end
from shim.cutover.etcd_fleet import EtcdEvidence
from shim.cutover.etcd_store import EtcdBackend
from shim.cutover.file_store import FileBackend
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.errors import FlagStoreUnavailable
from shim.parity.verdicts import ParityStore
from shim.route_config import load_routes
from shim.settings import PROJECT_ROOT
from tests.servers import EtcdServer

ROUTES = load_routes(PROJECT_ROOT / "config" / "routes.toml")


def test_a_watch_from_a_compacted_revision_reads_everything_again(
    etcd: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the checker would apply the change too: keep it out of the way, so the watch alone
    # has to find out
    monkeypatch.setattr(etcd_store, "CHECK_SECONDS", 3600.0)
    prefix = f"/compact-{uuid.uuid4().hex[:8]}/"
    client = Etcd([etcd.url])
    writer = FlagStore(EtcdBackend(client, prefix, ROUTES, tmp_path), ROUTES, {})
    writer.set("embed", serve="go", actor="t")
    reader = EtcdBackend(Etcd([etcd.url]), prefix, ROUTES, tmp_path / "reader")
    view = FlagView(FlagStore(reader, ROUTES, {}), poll_seconds=0.1)
    view.refresh(force=True)
    _, revision = client.get(f"{prefix}flags")
    reader.applied_mod, reader.revision = revision, revision  # as if it watched up to here
    for shadow in (True, False, True):
        writer.set("embed", shadow=shadow, actor="t")
    writer.set("sql", serve="go", actor="t")
    _, now = client.get(f"{prefix}flags")
    client.call("kv/compaction", {"revision": str(now)})

    async def follow_until_applied() -> float:
        task = asyncio.create_task(view.watch())
        start = time.monotonic()
        try:
            while view.state.generation < 5:
                assert time.monotonic() - start < 5, "the compacted watch did not recover"
                await asyncio.sleep(0.02)
            return time.monotonic() - start
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(follow_until_applied())
    assert view.serving("sql") == "go" and view.shadowing("embed")
    assert reader.last_good_copy() is not None  # cached for a start while etcd is down
    client.close()
    reader.etcd.close()


def test_parity_evidence_of_every_instance_is_judged_together(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    prefix = f"/parity-{uuid.uuid4().hex[:8]}/"
    client = Etcd([etcd.url])
    here = EtcdEvidence(client, prefix, ParityStore(tmp_path / "a"), "host-a:1")
    there = EtcdEvidence(client, prefix, ParityStore(tmp_path / "b"), "host-b:1")
    now = time.time()
    there.local.append_many(
        [
            {"endpoint": "embed", "kind": "shadow", "ts": now - i, "metrics": {}, "request": "x"}
            for i in range(3)
        ]
    )
    here.local.append({"endpoint": "embed", "kind": "shadow", "ts": now, "metrics": {}})
    assert len(here.samples(window_seconds=3600)) == 1  # nothing published yet
    there.publish(window_seconds=3600)
    seen = here.samples(window_seconds=3600)
    assert len(seen) == 4 and [r["ts"] for r in seen] == sorted(r["ts"] for r in seen)
    assert all("request" not in r for r in seen if r["ts"] != now)  # slimmed for etcd
    assert len(there.samples(window_seconds=3600)) == 3  # its own from its files, once
    client.close()


def test_with_auth_on_the_store_authenticates_and_says_what_to_fix_when_refused(
    own_etcd: EtcdServer, tmp_path: Path
) -> None:
    admin = Etcd([own_etcd.url])
    prefix = "/authed/"
    perm = {"permType": "READWRITE", "key": b64(prefix), "range_end": prefix_end(prefix)}
    for method, body in [
        ("auth/user/add", {"name": "root", "password": "root-pw"}),
        ("auth/role/add", {"name": "root"}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/user/add", {"name": "shim", "password": "shim-pw"}),
        ("auth/role/add", {"name": "shim"}),
        (
            "auth/role/grant",
            {"name": "shim", "perm": perm},
        ),
        ("auth/user/grant", {"user": "shim", "role": "shim"}),
        ("auth/enable", {}),
    ]:
        admin.call(method, body)
    admin.close()

    def store(password: str, where: str = prefix) -> FlagStore:
        client = Etcd([own_etcd.url], username="shim", password=password)
        clients.append(client)
        return FlagStore(EtcdBackend(client, where, ROUTES, tmp_path), ROUTES, {})

    clients: list[Etcd] = []
    store("shim-pw").set("embed", serve="go", actor="t")
    assert store("shim-pw").read().flags["embed"].serve == "go"
    with pytest.raises(FlagStoreUnavailable, match="SHIM_ETCD__PASSWORD"):
        store("wrong").read()
    with pytest.raises(FlagStoreUnavailable, match="permission denied"):
        store("shim-pw", "/elsewhere/").read()
    for client in clients:
        client.close()


def test_a_single_host_state_moves_into_etcd_with_its_history(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    from shim.cutover.fleet import export_document, import_document

    single = FlagStore(FileBackend(tmp_path / "host", ROUTES), ROUTES, {})
    single.set("embed", serve="go", actor="cli:ops", reason="cut over")
    single.set("sql", shadow=True, actor="cli:ops")
    client = Etcd([etcd.url])
    prefix = f"/import-{uuid.uuid4().hex[:8]}/"
    fleet = FlagStore(EtcdBackend(client, prefix, ROUTES, tmp_path), ROUTES, {})
    generation = import_document(fleet, export_document(single), actor="cli:ops", reason="move")
    state = fleet.read()
    assert generation == 3 and state.generation == 3
    assert state.flags["embed"].serve == "go" and state.flags["sql"].shadow is True
    trail = fleet.backend.audit().records
    assert [r["generation"] for r in trail] == [1, 2, 3, 3]  # the history, then the import
    assert trail[0]["reason"] == "cut over" and trail[-1]["imported_from"].startswith("state ")
    client.close()
