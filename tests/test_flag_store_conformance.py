"""One behaviour for every flag store: the file store of one host and etcd for a fleet.

Each test runs against both (`kind`); a new store passes this suite before anything uses it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim.cutover.etcd import Etcd
from shim.cutover.fleet import Stores, open_stores
from shim.cutover.workers import WorkerStatus
from shim.errors import Conflict, FlagStateError
from shim.route_config import load_routes
from shim.settings import PROJECT_ROOT, Settings
from tests.servers import EtcdServer

ROUTES = load_routes(PROJECT_ROOT / "config" / "routes.toml")
Spec = dict[str, Any]


def settings_of(spec: Spec) -> Settings:
    extra: dict[str, Any] = {}
    if spec["kind"] == "etcd":
        extra = {"flag_store": "etcd", "etcd": {"endpoints": spec["url"], "prefix": spec["prefix"]}}
    return Settings(state_dir=Path(spec["state_dir"]), **extra)


_opened: list[Stores] = []


def stores_of(spec: Spec) -> Stores:
    stores = open_stores(settings_of(spec), ROUTES)
    _opened.append(stores)
    return stores


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture(params=["file", "etcd"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    """Where one store lives, as plain data (child processes open it again)."""
    if request.param == "file":
        yield {"kind": "file", "state_dir": str(tmp_path)}
        return
    etcd: EtcdServer = request.getfixturevalue("etcd")
    yield {
        "kind": "etcd",
        "state_dir": str(tmp_path),
        "url": etcd.url,
        "prefix": f"/conformance-{uuid.uuid4().hex[:8]}/",
    }


def put_garbage(spec: Spec, what: str) -> None:
    """Bytes that are no state or no audit record, where the store keeps them."""
    if spec["kind"] == "file":
        path = Path(spec["state_dir"]) / ("flags.json" if what == "state" else "audit.jsonl")
        with path.open("ab" if what == "audit" else "wb") as file:
            file.write(b'{"version": 1, "generation": 9, "fla' if what == "state" else b"{]\n")
        return
    client = Etcd([spec["url"]])
    key = "flags" if what == "state" else "audit/999999999999/000"
    client.put(spec["prefix"] + key, b'{"version": 1, "generation": 9, "fla')
    client.close()


def test_every_change_is_one_audit_record_and_generations_strictly_increase(spec: Spec) -> None:
    store = stores_of(spec).flags
    assert store.read().generation == 0
    store.set("embed", serve="go", actor="t", reason="first")
    store.set("embed", shadow=True, actor="t")
    store.rollback(["embed", "sql"], actor="t")  # sql is already rust: one record
    state = store.read()
    assert state.generation == 3
    assert state.flags["embed"].serve == "rust" and state.flags["embed"].shadow is True
    records = store.backend.audit().records
    assert [(r["generation"], r["endpoint"]) for r in records] == [
        (1, "embed"),
        (2, "embed"),
        (3, "embed"),
    ]
    assert records[0]["reason"] == "first" and records[0]["after"]["serve"] == "go"
    assert store.backend.audit("sql").records == []


def test_no_change_writes_nothing_and_audits_nothing(spec: Spec) -> None:
    store = stores_of(spec).flags
    store.set("embed", serve="go", actor="t")
    assert store.set("embed", serve="go", actor="t") is None
    assert store.rollback(["sql"], actor="t") == []
    assert store.read().generation == 1
    assert len(store.backend.audit().records) == 1


def test_a_stale_expected_generation_is_refused_with_the_state_now(spec: Spec) -> None:
    store = stores_of(spec).flags
    store.set("embed", serve="go", actor="t")
    with pytest.raises(Conflict) as refused:
        store.set("embed", serve="rust", actor="t", expected_generation=0)
    assert refused.value.generation == 1 and refused.value.status_code == 409
    assert refused.value.to_dict()["current"] == {"serve": "go", "shadow": False, "percent": None}
    assert store.read().flags["embed"].serve == "go"
    change = store.set("embed", serve="rust", actor="t", expected_generation=1)
    assert change is not None and change.generation == 2


def test_readers_never_see_a_torn_state(spec: Spec) -> None:
    writer, reader = stores_of(spec).flags, stores_of(spec).flags
    done = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def read_all() -> None:
        while not done.is_set():
            try:
                state = reader.read()
            except FlagStateError as exc:
                errors.append(exc)
                return
            seen.append(state.generation)
            # one writer, three steps a round: each generation has exactly one shape
            embed, sql = state.flags.get("embed"), state.flags.get("sql")
            shape = (embed.serve if embed else "rust", sql.serve if sql else "rust")
            expected = {0: ("rust", "rust"), 1: ("go", "rust"), 2: ("go", "go")}
            if shape != expected[state.generation % 3]:
                errors.append(AssertionError(f"generation {state.generation}: {shape}"))

    thread = threading.Thread(target=read_all)
    thread.start()
    for _ in range(10):
        writer.set("embed", serve="go", actor="t")
        writer.set("sql", serve="go", actor="t")
        writer.rollback(["embed", "sql"], actor="t")  # both back in one commit
    done.set()
    thread.join()
    assert not errors
    assert seen == sorted(seen) and len(set(seen)) > 1  # never backwards


def _flip_many(args: tuple[Spec, str, int]) -> None:
    spec, endpoint, count = args
    store = stores_of(spec).flags
    for i in range(count):
        store.set(endpoint, shadow=i % 2 == 0, actor=f"writer-{endpoint}")


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_concurrent_writers_lose_no_update(spec: Spec, how: str) -> None:
    endpoints = ["embed", "sql", "vectors_search", "retrieve"]
    jobs = [(spec, e, 8) for e in endpoints]
    if how == "processes":
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            pool.map(_flip_many, jobs)
    else:
        threads = [threading.Thread(target=_flip_many, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    store = stores_of(spec).flags
    state = store.read()
    assert state.generation == 32
    records = store.backend.audit().records
    assert [r["generation"] for r in records] == list(range(1, 33))
    assert all(state.flags[e].shadow is False for e in endpoints)  # each one's last (i=7)


def test_acknowledgements_say_which_generation_each_worker_serves(spec: Spec) -> None:
    workers = stores_of(spec).workers
    now = time.time()
    status = WorkerStatus(os.getpid(), workers.host, 3, now, now, instance="test:1")
    workers.publish(status)
    deadline = time.monotonic() + 5
    while not workers.live() and time.monotonic() < deadline:
        time.sleep(0.05)  # etcd's copy is published by a thread of its own
    applied = workers.applied(3)
    assert applied.complete and [w.pid for w in applied.workers] == [os.getpid()]
    lagging = workers.applied(4)
    assert not lagging.complete and "test:1 pid" in lagging.summary()
    assert "applied by 0/1 workers" in lagging.summary()
    workers.remove(os.getpid())
    deadline = time.monotonic() + 5
    while workers.live() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers.live() == []


def test_garbage_in_the_audit_is_skipped_and_counted(spec: Spec) -> None:
    store = stores_of(spec).flags
    store.set("embed", serve="go", actor="t")
    put_garbage(spec, "audit")
    trail = store.backend.audit()
    assert [r["generation"] for r in trail.records] == [1]
    assert trail.unreadable == 1


def test_the_audit_identity_changes_with_the_trail_and_only_with_it(spec: Spec) -> None:
    reader = stores_of(spec).flags.backend  # a long-lived reader: the operator page, /metrics
    writer = stores_of(spec).flags
    empty = reader.audit_identity()
    assert reader.audit_identity() == empty and reader.audit().records == []
    writer.set("embed", serve="go", actor="t")
    first = reader.audit_identity()
    assert first != empty
    assert [r["generation"] for r in reader.audit().records] == [1]
    assert writer.set("embed", serve="go", actor="t") is None  # no change, no new record
    assert reader.audit_identity() == first
    writer.rollback(["embed"], actor="t")
    second = reader.audit_identity()
    assert second not in (empty, first)
    assert [r["generation"] for r in reader.audit().records] == [1, 2]
    put_garbage(spec, "audit")
    assert reader.audit_identity() != second
    trail = reader.audit()
    assert [r["generation"] for r in trail.records] == [1, 2] and trail.unreadable == 1
    assert reader.describe_audit()  # says where, for the CLI's warning about such lines


def test_the_parity_evidence_says_when_its_samples_may_have_changed(spec: Spec) -> None:
    stores = stores_of(spec)
    before = stores.parity.identity()
    assert stores.parity.identity() == before and stores.parity.samples(window_seconds=60) == []
    stores.local_parity.append({"endpoint": "embed", "kind": "shadow", "ts": time.time()})
    assert stores.parity.identity() != before
    assert [r["endpoint"] for r in stores.parity.samples(window_seconds=60)] == ["embed"]


def test_a_corrupt_state_is_never_served_and_a_write_repairs_it(spec: Spec) -> None:
    store = stores_of(spec).flags
    store.set("embed", serve="go", actor="t")
    put_garbage(spec, "state")
    with pytest.raises(FlagStateError):
        store.read()
    state, problem = store.read_or_last_good()
    assert problem is not None and state.flags["embed"].serve == "go"  # the last good copy
    change = store.set("sql", serve="go", actor="t")
    assert change is not None and change.recovery is not None
    assert change.recovery.kept_aside is not None
    repaired = store.read()
    assert repaired.flags["sql"].serve == "go"
    assert [r["endpoint"] for r in store.backend.audit().records][-1] == "sql"
