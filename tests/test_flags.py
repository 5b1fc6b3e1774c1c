"""The flag store and a worker's view of it, without a server."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from shim.cutover.file_store import FileBackend
from shim.cutover.file_store import audit_lines as audit_trail
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.errors import Conflict, FlagPinned, FlagRefused, UnknownEndpoint
from shim.route_config import load_routes

ROUTES = load_routes(Path(__file__).resolve().parent.parent / "config" / "routes.toml")


def store(tmp_path: Path, **pins: str) -> FlagStore:
    return FlagStore(FileBackend(tmp_path, ROUTES), ROUTES, pins)  # type: ignore[arg-type]


def audit_lines(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_defaults_come_from_the_route_table(tmp_path: Path) -> None:
    flags = store(tmp_path)
    assert flags.effective("embed").flag.serve == "rust"
    assert flags.effective("matrix_search").flag.serve == "go"
    assert flags.effective("embed").source == "default"


def test_a_change_persists_bumps_the_generation_and_is_audited_once(tmp_path: Path) -> None:
    change = store(tmp_path).set("embed", serve="go", actor="test", reason="cutover")
    assert change is not None and change.generation == 1
    fresh = store(tmp_path)  # as after a restart
    assert fresh.effective("embed").flag.serve == "go"
    assert fresh.read().generation == 1
    [record] = audit_lines(tmp_path)
    assert record["endpoint"] == "embed" and record["actor"] == "test"
    assert record["before"]["serve"] == "rust" and record["after"]["serve"] == "go"
    assert record["reason"] == "cutover" and record["generation"] == 1


def test_setting_the_current_value_changes_nothing(tmp_path: Path) -> None:
    assert store(tmp_path).set("embed", serve="rust", actor="t") is None
    assert audit_lines(tmp_path) == []


def test_rollback_sends_everything_back_to_rust_in_one_generation(tmp_path: Path) -> None:
    flags = store(tmp_path)
    flags.set("embed", serve="go", actor="t")
    flags.set("sql", serve="go", actor="t")
    changes = flags.rollback(None, actor="t")
    assert {c.endpoint for c in changes} == {"embed", "sql"}
    assert {c.generation for c in changes} == {3}
    assert all(flags.effective(n).flag.serve == "rust" for n in ("embed", "sql"))
    assert flags.effective("matrix_search").flag.serve == "go"  # Go-only: left alone


def test_go_only_endpoint_cannot_go_to_rust(tmp_path: Path) -> None:
    with pytest.raises(FlagRefused, match="Go-only"):
        store(tmp_path).set("playbooks_record", serve="rust", actor="t")
    with pytest.raises(FlagRefused):
        store(tmp_path).rollback(["matrix_search"], actor="t")


def test_unknown_endpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownEndpoint):
        store(tmp_path).set("embedd", serve="go", actor="t")


def test_pin_beats_the_file_and_refuses_flips(tmp_path: Path) -> None:
    store(tmp_path).set("embed", serve="go", actor="t")
    pinned = store(tmp_path, embed="rust")
    effective = pinned.effective("embed")
    assert (effective.flag.serve, effective.pinned_by) == ("rust", "SHIM_PIN__EMBED")
    assert effective.runtime is not None and effective.runtime.serve == "go"
    with pytest.raises(FlagPinned) as caught:
        pinned.set("embed", serve="go", actor="t")
    assert caught.value.variable == "SHIM_PIN__EMBED" and caught.value.status_code == 409


def test_worker_view_applies_changes_and_keeps_last_good_state_on_corruption(
    tmp_path: Path,
) -> None:
    flags = store(tmp_path)
    view = FlagView(flags, poll_seconds=0.1)
    flags.set("embed", serve="go", actor="t")
    assert view.refresh() and view.serving("embed") == "go"
    (tmp_path / "flags.json").write_text('{"version": 1, "generation": 9, "flags": {"embed": {"se')
    assert not view.refresh()
    assert view.serving("embed") == "go" and view.state.generation == 1
    assert view.load_errors == 1
    (tmp_path / "flags.json").write_text('{"version": 1, "generation": 10, "flags": {}}')
    assert view.refresh() and view.serving("embed") == "rust"


def _flip_many(args: tuple[str, str, int]) -> None:
    state_dir, endpoint, count = args
    flags = FlagStore(FileBackend(Path(state_dir), ROUTES), ROUTES, {})
    for i in range(count):
        flags.set(endpoint, shadow=i % 2 == 0, actor=f"writer-{endpoint}")


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    endpoints = ["embed", "sql", "vectors_search", "retrieve"]
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        pool.map(_flip_many, [(str(tmp_path), e, 15) for e in endpoints])
    state = store(tmp_path).read()
    assert state.generation == 60
    records = audit_lines(tmp_path)
    assert len(records) == 60
    assert sorted(r["generation"] for r in records) == list(range(1, 61))
    assert all(state.flags[e].shadow is True for e in endpoints)  # each one's last write (i=14)


def test_a_write_against_a_stale_generation_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    flags = store(tmp_path)
    shown = flags.read().generation
    flags.set("embed", serve="go", actor="someone-else")
    with pytest.raises(Conflict) as refused:
        flags.set("embed", serve="rust", actor="test", expected_generation=shown)
    assert (refused.value.expected, refused.value.generation) == (shown, shown + 1)
    with pytest.raises(Conflict):
        flags.rollback(None, actor="test", expected_generation=shown)
    assert flags.effective("embed").flag.serve == "go"
    assert len(audit_lines(tmp_path)) == 1
    change = flags.set("embed", serve="rust", actor="test", expected_generation=shown + 1)
    assert change is not None and change.generation == shown + 2


def test_the_audit_trail_can_be_read_from_where_a_read_ended_whole_lines_only(
    tmp_path: Path,
) -> None:
    flags = store(tmp_path)
    flags.set("embed", serve="go", actor="test")
    first = audit_trail(tmp_path)
    assert len(first.records) == 1 and first.end == (tmp_path / "audit.jsonl").stat().st_size
    flags.set("embed", serve="rust", actor="test")
    with (tmp_path / "audit.jsonl").open("ab") as file:
        file.write(b'{"endpoint": "sql", "gener')  # a line still being written
    tail = audit_trail(tmp_path, start=first.end)
    assert [r["after"]["serve"] for r in tail.records] == ["rust"] and tail.unreadable == 0
    assert audit_trail(tmp_path, start=tail.end).records == []


def test_a_long_lived_reader_sees_the_audit_file_as_a_fresh_read_would(tmp_path: Path) -> None:
    flags = store(tmp_path)
    reader = FileBackend(tmp_path, ROUTES)  # keeps what it parsed, reads on from there
    audit = tmp_path / "audit.jsonl"
    flags.set("embed", serve="go", actor="test")
    assert [r["generation"] for r in reader.audit().records] == [1]
    with audit.open("ab") as file:
        file.write(b'{"endpoint": "sql", "gener')  # a line still being written
    assert reader.audit().unreadable == 1  # as a fresh read counts it
    with audit.open("ab") as file:
        file.write(b'ation": 7, "before": {}, "after": {}}\n')  # ... and finished
    trail = reader.audit()
    assert [r["generation"] for r in trail.records] == [1, 7] and trail.unreadable == 0
    flags.set("embed", serve="rust", actor="test")
    assert [r["generation"] for r in reader.audit().records] == [1, 7, 2]
    with audit.open("r+b") as file:  # rewritten in place by a tool: same inode, longer
        file.write(b"{]\n" + audit.read_bytes().replace(b'"generation":1', b'"generation":5'))
    trail = reader.audit()
    assert [r["generation"] for r in trail.records] == [5, 7, 2] and trail.unreadable == 1
    assert trail == FileBackend(tmp_path, ROUTES).audit()


def test_a_change_whose_audit_append_was_lost_is_still_audited_once(tmp_path: Path) -> None:
    flags = store(tmp_path)
    flags.set("embed", serve="go", actor="t", reason="before the crash")
    (tmp_path / "audit.jsonl").write_bytes(b"")  # as if the process died after the rename
    assert [r["reason"] for r in flags.backend.audit().records] == ["before the crash"]
    flags.set("sql", serve="go", actor="t")
    assert [r["generation"] for r in audit_lines(tmp_path)] == [1, 2]
    flags.set("sql", serve="rust", actor="t")
    assert [r["generation"] for r in audit_lines(tmp_path)] == [1, 2, 3]
