"""The flag store of a fleet: the flag state and its audit trail in etcd.

Layout under the prefix (default `/cutover-shim/`; two deployments on one etcd use two):

    flags                            the whole flag state, one JSON document
    audit/<generation:012>/<n:03>    one audit record per changed endpoint, ordered
    workers/<host>/<pid>             each worker's status, on its own lease (etcd_fleet)
    parity/<instance>/<endpoint>     each instance's recent parity samples (etcd_fleet)

One document for the state, not one key per endpoint: the generation is one number over
all endpoints, a rollback of several endpoints is one write, and a watcher applies whole
snapshots with nothing to assemble. A commit is one transaction: compare the `flags` key's
`mod_revision` with the one read, then put the new state and its audit records; a stale
writer's transaction fails and reads back the generation now.

Workers never touch etcd on the request path: each one reads `flags` at a revision, watches
from the next one and applies each new document to its in-memory `FlagView`. A broken watch
resumes from the last revision seen; a compacted one re-reads. A checker reads the key every
second: it is how a dead stream (etcd paused, a half-open connection) is found, and its
answer is applied directly when the watch missed a change, so a returning etcd is caught up
within about a second. Reconnects back off with jitter. The last state applied is cached in
SHIM_STATE_DIR so an instance started while etcd is down serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from shim.cutover.etcd import Etcd, b64, kv_value, prefix_end
from shim.cutover.file_store import atomic_write
from shim.cutover.flag_state import FlagState, is_audit_record, state_document, state_from_document
from shim.cutover.store import StaleGeneration
from shim.errors import FlagStateError, FlagStoreUnavailable
from shim.jsonl import Lines
from shim.routes import RouteTable
from shim.timestamps import iso_utc

if TYPE_CHECKING:
    from shim.cutover.flag_view import FlagView

log = logging.getLogger("shim.etcd")

# Here, not in shim.metrics: only processes that use etcd create them (a supervisor's
# zero would otherwise be the lowest of every "livemin" below).
FLAG_STORE_UP = Gauge(
    "shim_flag_store_up",
    "1 while the flag store (etcd) answers this worker, 0 while it serves a stale copy.",
    multiprocess_mode="livemin",
)
FLAG_APPLIED_REVISION = Gauge(
    "shim_flag_store_applied_revision",
    "etcd mod_revision of the flag state this worker serves (the lowest among workers).",
    multiprocess_mode="livemin",
)
FLAG_APPLY_LAG = Histogram(
    "shim_flag_store_apply_lag_seconds",
    "Time from a flag commit in etcd to this worker serving it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FLAG_WATCH_RESTARTS = Counter(
    "shim_flag_store_watch_restarts_total",
    "Flag watches reopened (etcd away, a dead stream, a compacted revision).",
)
FLAG_WRITE_CONFLICTS = Counter(
    "shim_flag_store_write_conflicts_total",
    "Flag commits refused because another writer landed first (then retried or 409).",
)

CACHE_FILE = "flags.etcd-cache.json"
CHECK_SECONDS = 1.0
BACKOFF_SECONDS = (0.1, 2.0)  # first retry, cap


class EtcdBackend:
    """`shim.cutover.store.FlagBackend` in etcd."""

    kind = "etcd"

    def __init__(self, etcd: Etcd, prefix: str, routes: RouteTable, state_dir: Path) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.key = f"{prefix}flags"
        self.routes = routes
        self.cache_path = state_dir / CACHE_FILE
        self._mod_revisions: dict[int, int] = {}  # generation -> mod_revision, as read
        self._status = "ok"
        self.applied_mod = -1  # the `flags` mod_revision this worker's view serves
        self.revision = 0  # the store revision the watch has reached

    def describe(self) -> str:
        return f"etcd {self.etcd.describe()} prefix {self.prefix}"

    def status(self) -> str:
        return self._status

    def identity(self) -> object:
        return self.applied_mod

    def _mark(self, status: str) -> None:
        if status != self._status:
            log.warning("flag store %s: %s", self.describe(), status)
            self._status = status
        FLAG_STORE_UP.set(1 if status == "ok" else 0)

    def _parse(self, kv: Mapping[str, Any] | None) -> FlagState:
        if kv is None:
            return FlagState()
        try:
            document = orjson.loads(kv_value(kv))
        except orjson.JSONDecodeError as exc:
            raise FlagStateError(f"{self.key} in etcd is not a valid state: {exc}") from None
        state = state_from_document(document, self.routes)
        self._mod_revisions[state.generation] = int(kv.get("mod_revision", 0))
        if len(self._mod_revisions) > 64:
            self._mod_revisions.pop(min(self._mod_revisions))
        return state

    def read(self) -> FlagState:
        try:
            kv, _ = self.etcd.get(self.key)
        except FlagStoreUnavailable:
            self._mark("stale")  # e.g. a worker starting while etcd is down
            raise
        self._mark("ok")
        return self._parse(kv)

    def commit(
        self, state: FlagState, records: Sequence[Mapping[str, Any]], *, expected: int | None
    ) -> None:
        document = {**state_document(state), "committed_at": time.time()}
        puts = [{"request_put": {"key": _k(self.key), "value": _v(orjson.dumps(document))}}]
        origin = f"{socket.gethostname()} pid {os.getpid()}"  # the fleet's audit says where
        for n, record in enumerate(records):
            key = f"{self.prefix}audit/{state.generation:012d}/{n:03d}"
            value = orjson.dumps({"instance": origin, **record})
            puts.append({"request_put": {"key": _k(key), "value": _v(value)}})
        compare: list[dict[str, Any]] = []
        if expected is not None:
            if expected not in self._mod_revisions:
                current = self.read()  # learns its mod_revision
                if current.generation != expected:
                    raise StaleGeneration(current.generation)
            mod = self._mod_revisions.get(expected, 0)  # 0: the key does not exist yet
            target = {"target": "MOD", "mod_revision": str(mod)}
            if not mod:
                target = {"target": "CREATE", "create_revision": "0"}
            compare.append({"key": _k(self.key), "result": "EQUAL", **target})
        answer = self.etcd.call(
            "kv/txn",
            {"compare": compare, "success": puts, "failure": [_range(self.key)]},
        )
        if not answer.get("succeeded"):
            FLAG_WRITE_CONFLICTS.inc()
            ranges = answer.get("responses") or [{}]
            kvs = ranges[0].get("response_range", {}).get("kvs") or [None]
            try:
                now = self._parse(kvs[0]).generation
            except FlagStateError:
                now = -1  # the next read finds it unusable and repairs it
            raise StaleGeneration(now)
        self._cache(state)  # a repair on this host starts from it, should etcd lose it

    def audit(self, endpoint: str | None = None) -> Lines:
        records, unreadable = [], 0
        for kv in self.etcd.get_prefix(f"{self.prefix}audit/"):
            try:
                record = orjson.loads(kv_value(kv))
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            if not isinstance(record, dict) or not is_audit_record(record):
                unreadable += 1
                continue
            if endpoint is None or record["endpoint"] == endpoint:
                records.append(record)
        return Lines(records, unreadable)

    def audit_identity(self) -> object:
        """How many audit records there are and the newest one's revision: one range with
        no values (records are only ever added, in the transaction of their change)."""
        answer = self.etcd.call(
            "kv/range",
            {
                "key": _k(f"{self.prefix}audit/"),
                "range_end": prefix_end(f"{self.prefix}audit/"),
                "sort_order": "DESCEND",
                "sort_target": "MOD",
                "limit": 1,
                "keys_only": True,
            },
        )
        kvs = answer.get("kvs") or [{}]
        return (int(answer.get("count", 0)), int(kvs[0].get("mod_revision", 0)))

    def describe_audit(self) -> str:
        return f"etcd {self.etcd.describe()} prefix {self.prefix}audit/"

    def keep_aside(self) -> str | None:
        kv, _ = self.etcd.get(self.key)
        if kv is None:
            return None
        aside = f"{self.key}.corrupt-{iso_utc().replace(':', '')}"
        self.etcd.put(aside, kv_value(kv))
        return aside

    def last_good_copy(self) -> FlagState | None:
        try:
            document = orjson.loads(self.cache_path.read_bytes())
            return state_from_document(document, self.routes)
        except (OSError, orjson.JSONDecodeError, FlagStateError):
            return None

    # -- a worker's view ----------------------------------------------------------------

    async def follow(self, view: FlagView) -> None:
        """Watch the `flags` key for the worker's whole life (see the module docstring)."""
        restart = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._check(view, restart), name="flag-store-check")
        ]
        delay = BACKOFF_SECONDS[0]
        reread = self.applied_mod < 0
        try:
            while True:
                restart.clear()
                watch = asyncio.create_task(self._watch(view, reread), name="flag-watch")
                waiter = asyncio.create_task(restart.wait())
                tasks[1:] = [watch, waiter]
                await asyncio.wait({watch, waiter}, return_when=asyncio.FIRST_COMPLETED)
                await _cancel(tasks[1:])
                reread = False
                if watch.done() and not watch.cancelled():
                    error = watch.exception()
                    if isinstance(error, _Compacted):
                        reread = True  # the revision we had is gone: read it all again
                        continue
                    if error is not None and not isinstance(error, FlagStoreUnavailable):
                        log.error("flag watch failed: %r", error)
                FLAG_WATCH_RESTARTS.inc()
                await asyncio.sleep(random.uniform(0, delay))  # full jitter
                healthy = self._status == "ok"
                delay = BACKOFF_SECONDS[0] if healthy else min(BACKOFF_SECONDS[1], delay * 2)
        finally:
            await _cancel(tasks)
            await self.etcd.aclose()

    async def _watch(self, view: FlagView, reread: bool) -> None:
        if reread:
            answer = await self.etcd.acall("kv/range", {"key": _k(self.key)})
            self.revision = int(answer["header"].get("revision", 0))
            kvs = answer.get("kvs") or [None]
            await self._apply(view, kvs[0])
        async for result in self.etcd.watch(self.key, self.revision + 1):
            if result.get("compact_revision") or result.get("canceled"):
                log.warning(
                    "flag watch from revision %d was compacted (now %s): reading again",
                    self.revision + 1,
                    result.get("compact_revision"),
                )
                raise _Compacted()
            self._mark("ok")
            for event in result.get("events") or []:
                if event.get("type") == "DELETE":
                    await self._apply(view, None, mod=int(event["kv"].get("mod_revision", 0)))
                else:
                    await self._apply(view, event["kv"])
            revision = int(result.get("header", {}).get("revision", 0))
            self.revision = max(self.revision, revision)

    async def _check(self, view: FlagView, restart: asyncio.Event) -> None:
        """Every second: is etcd there, and did the watch miss a change? (Once may be a
        race with the watch's own delivery; twice means the stream is dead.)"""
        missed = 0
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                answer = await self.etcd.acall("kv/range", {"key": _k(self.key)})
            except FlagStoreUnavailable:
                if self._status == "ok":
                    restart.set()  # a dead stream: reconnect once etcd answers
                self._mark("stale")
                continue
            except Exception:
                log.exception("flag store check failed")
                continue
            was = self._status
            self._mark("ok")
            kvs = answer.get("kvs") or [None]
            mod = int(kvs[0].get("mod_revision", 0)) if kvs[0] else 0
            if mod > self.applied_mod:
                log.info("flag store check found revision %d not yet applied", mod)
                await self._apply(view, kvs[0])
                missed += 1
                if was == "ok" and missed >= 2:
                    restart.set()  # twice in a row: the stream is silent, replace it
                    missed = 0
            else:
                missed = 0
            self.revision = max(self.revision, int(answer["header"].get("revision", 0)))

    async def _apply(
        self, view: FlagView, kv: Mapping[str, Any] | None, *, mod: int | None = None
    ) -> None:
        revision = mod if mod is not None else int(kv.get("mod_revision", 0)) if kv else 0
        if revision and revision <= self.applied_mod:
            return
        try:
            state = self._parse(kv)
        except FlagStateError as exc:
            view.load_errors += 1
            if view.on_error:
                view.on_error(exc)
            log.error(
                "flag state not applied, keeping generation %d: %s", view.state.generation, exc
            )
            self.applied_mod = revision
            return
        self.applied_mod = revision
        view.identity = revision
        view.apply(state)
        FLAG_APPLIED_REVISION.set(revision)
        if kv is not None:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
                committed = orjson.loads(kv_value(kv)).get("committed_at")
                if isinstance(committed, int | float):
                    FLAG_APPLY_LAG.observe(max(0.0, time.time() - committed))
        await asyncio.to_thread(self._cache, state)

    def _cache(self, state: FlagState) -> None:
        """What an instance started while etcd is down serves."""
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_path, orjson.dumps(state_document(state)))
        except OSError as exc:
            log.warning("cannot cache the flag state in %s: %s", self.cache_path, exc)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class _Compacted(Exception):
    """The watch's start revision was compacted away."""


_k = _v = b64


def _range(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _k(key)}}
