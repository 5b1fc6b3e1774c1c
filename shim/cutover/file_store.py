"""The flag store of one host: `flags.json`, `flags.last-good.json` and `audit.jsonl` in
SHIM_STATE_DIR (the `shim.cutover.store.FlagBackend` of a single-host deployment).

Writers (CLI, admin API) take an exclusive lock, write a temp file, fsync and rename it, so
a crash mid-write never leaves a torn file and two writers never lose an update (the
generation is compared under the lock). The file carries the audit records of its own
change, so the change and its audit land in one rename; they are also appended to
`audit.jsonl`, and a record lost to a crash between the two is read back from the file and
appended at the next write. Workers poll the file's identity (a `stat`, no read) and reload
it in a thread when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from shim.cutover.flag_state import (
    FlagState,
    is_audit_record,
    parse_state,
    state_document,
    state_from_document,
)
from shim.cutover.store import StaleGeneration
from shim.errors import FlagStateError
from shim.jsonl import Lines, append_lines, parse_lines, read_lines
from shim.routes import RouteTable
from shim.timestamps import iso_utc

if TYPE_CHECKING:
    from shim.cutover.flag_view import FlagView

log = logging.getLogger("shim.flags")

FLAGS_FILE = "flags.json"
LAST_GOOD_FILE = "flags.last-good.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = "flags.lock"
AUDIT_TAIL_BYTES = 64 * 1024  # holds the last change's records many times over
SEAM_BYTES = 64  # of the head and of the end of a cached read, checked before reading on


def repair_hint(path: Path) -> str:
    return (
        f"the workers keep serving their last good flags; any write repairs {path} and keeps "
        "the bad file aside: `shim flags set ENDPOINT rust|go` or `shim rollback` "
        "(see the last good state with `shim flags`)"
    )


class FileBackend:
    """`shim.cutover.store.FlagBackend` in one host's state directory (see the module docstring)."""

    kind = "file"

    def __init__(self, state_dir: Path, routes: RouteTable) -> None:
        self.state_dir = state_dir
        self.routes = routes
        self.path = state_dir / FLAGS_FILE
        self.last_good_path = state_dir / LAST_GOOD_FILE
        self.audit_path = state_dir / AUDIT_FILE
        # What a long-lived reader (the operator page, /metrics) already parsed of
        # audit.jsonl: (inode, end, the bytes before end, records, unreadable lines).
        self._trail: tuple[int, int, bytes, list[dict[str, Any]], int] | None = None
        self._trail_lock = threading.Lock()

    def describe(self) -> str:
        return f"state {self.path}"

    def describe_audit(self) -> str:
        return str(self.audit_path)

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
        records = [r for r in carried if is_audit_record(r)] if isinstance(carried, list) else []
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
        valid, unreadable = self._appended()
        with contextlib.suppress(FlagStateError):
            logged = {r["generation"] for r in valid[-50:]}  # valid: each has one
            valid = valid + [r for r in self._read()[1] if r["generation"] not in logged]
        chosen = [r for r in valid if endpoint is None or r["endpoint"] == endpoint]
        return Lines(chosen, unreadable)

    def _appended(self) -> tuple[list[dict[str, Any]], int]:
        """The valid records of audit.jsonl and how many lines were not. The whole lines
        already parsed are kept, and a file that only grew since is read from where they
        end (a page polls every second: 10,000 lines cost ~50 ms to parse on a loaded
        2-core machine, a tail ~0); a last line still being written is parsed, not kept."""
        with self._trail_lock:
            try:
                file = self.audit_path.open("rb")
            except FileNotFoundError:
                self._trail = None
                return [], 0
            with file:
                fd = file.fileno()
                st = os.fstat(fd)
                inode, kept = st.st_ino, self._trail
                if (
                    kept is None
                    or kept[0] != inode
                    or kept[1] > st.st_size
                    or _seam(fd, kept[1]) != kept[2]
                ):
                    # First read, or the file was replaced, truncated or rewritten in place.
                    kept = (inode, 0, b"", [], 0)
                _, end, _, records, unreadable = kept
                file.seek(end)
                data = file.read()
                cut = data.rfind(b"\n") + 1
                if cut:
                    whole = _valid(parse_lines(data[:cut]))
                    records, unreadable = records + whole.records, unreadable + whole.unreadable
                    end += cut
                    kept = (inode, end, _seam(fd, end), records, unreadable)
            self._trail = kept
            if data[cut:].strip():
                pending = _valid(parse_lines(data[cut:]))
                return records + pending.records, unreadable + pending.unreadable
            return records, unreadable

    def audit_identity(self) -> object:
        """The audit file's and the flag file's `stat` (the flag file carries the newest
        change's records): two `stat`s, no read."""
        return (_stat(self.audit_path), _stat(self.path))

    def keep_aside(self) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            stamp = iso_utc().replace(":", "")
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
        return _stat(self.path)

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


def _seam(fd: int, end: int) -> bytes:
    """The file's first bytes and the bytes just before `end`: while they are the same,
    what was read up to `end` is taken to be still the file's beginning (a tool that
    rewrites the file in place changes one or the other; one that changes only the middle
    and keeps the size and both ends goes unnoticed until the file is replaced)."""
    size = min(SEAM_BYTES, end)
    return os.pread(fd, size, 0) + os.pread(fd, size, end - size)


def _valid(lines: Lines) -> Lines:
    """Only the audit records among `lines`; the others count as unreadable."""
    valid = [r for r in lines.records if is_audit_record(r)]
    return Lines(valid, lines.unreadable + len(lines.records) - len(valid), lines.end)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_audit(state_dir: Path, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The audit trail of `audit.jsonl` in `state_dir`, oldest first (torn or garbage lines
    are skipped)."""
    return audit_lines(state_dir, endpoint).records


def audit_lines(state_dir: Path, endpoint: str | None = None, *, start: int = 0) -> Lines:
    """The records of `audit.jsonl` in `state_dir` and how many of its lines could not be
    read (from `start`: only what was appended since a previous read's `end`)."""
    lines = _valid(read_lines(state_dir / AUDIT_FILE, start=start))
    chosen = [r for r in lines.records if endpoint is None or r["endpoint"] == endpoint]
    return Lines(chosen, lines.unreadable, lines.end)


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
