"""What a fleet shares in etcd besides its flags: which generation each worker serves
(acknowledgements, each on a lease) and every instance's recent parity samples.

Layout under the prefix (beside `flags` and `audit/`, see shim.cutover.etcd_store):

    workers/<host>/<pid>             each worker's status, on its own lease (TTL 5 s)
    parity/<instance>/<endpoint>     each instance's recent parity samples, slimmed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

import orjson

from shim.cutover.etcd import Etcd, EtcdError, kv_value
from shim.cutover.workers import LIVE_WITHIN_SECONDS, WaitsForWorkers, WorkerRegistry, WorkerStatus
from shim.errors import FlagStoreUnavailable
from shim.parity.verdicts import ParityStore, sample_time

log = logging.getLogger("shim.etcd")

LEASE_TTL_SECONDS = 5  # a stopped instance's workers drop out of N/N within this
PARITY_PUBLISH_SECONDS = 5.0
PARITY_SAMPLES_PER_ENDPOINT = 300
_SLIM_KEYS = ("endpoint", "kind", "ts", "time", "metrics", "blocking", "only_in", "error")


class EtcdRegistry(WaitsForWorkers):
    """`shim.cutover.store.Acknowledgements` for a fleet: every worker's status on its own lease.

    The status is also kept in the local status files (the supervisor waits for them).
    Publishing never blocks the caller: a thread of its own talks to etcd, so a worker's
    event loop never waits for a heartbeat, even with etcd down.
    """

    def __init__(self, etcd: Etcd, prefix: str, local: WorkerRegistry) -> None:
        self.etcd = etcd
        self.directory = f"{prefix}workers/"
        self.local = local
        self.host = local.host
        self._latest: WorkerStatus | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: int | None = None
        self._stopped = False

    def publish(self, status: WorkerStatus) -> None:
        self.local.publish(status)
        self._latest = status
        if self._thread is None:
            self._thread = threading.Thread(target=self._publisher, daemon=True, name="acks")
            self._thread.start()
        self._wake.set()

    def _publisher(self) -> None:
        while not self._stopped:
            self._wake.wait(1.0)
            self._wake.clear()
            status = self._latest
            if status is None or self._stopped:
                continue
            try:
                if self._lease is None or not self.etcd.keepalive(self._lease):
                    self._lease = self.etcd.grant(LEASE_TTL_SECONDS)
                key = f"{self.directory}{status.host}/{status.pid}"
                self.etcd.put(key, orjson.dumps(asdict(status)), lease=self._lease)
            except (FlagStoreUnavailable, EtcdError) as exc:
                log.debug("worker status not published: %s", exc)

    def remove(self, pid: int) -> None:
        self.local.remove(pid)
        if pid != os.getpid():
            return  # another process's lease: it expires by itself
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._lease is not None:
            with contextlib.suppress(FlagStoreUnavailable, EtcdError):
                self.etcd.revoke(self._lease)  # drop out of N/N now, not in 5 s

    def live(self) -> list[WorkerStatus]:
        workers = []
        for kv in self.etcd.get_prefix(self.directory):
            try:
                status = WorkerStatus(**orjson.loads(kv_value(kv)))
            except (orjson.JSONDecodeError, TypeError):
                continue
            if status.age <= LIVE_WITHIN_SECONDS + 1:  # etcd's copy lags the file's a little
                workers.append(status)
        return workers


class EtcdEvidence:
    """`shim.cutover.store.Evidence` for a fleet: this instance's samples from its own files, every
    other instance's from the summaries each one publishes in etcd."""

    def __init__(self, etcd: Etcd, prefix: str, local: ParityStore, instance: str) -> None:
        self.etcd = etcd
        self.directory = f"{prefix}parity/"
        self.local = local
        self.instance = instance
        self.unreadable = 0

    def identity(self) -> object:
        """This instance's files, and the other instances' publishing period: what they
        publish is read at most once a period (no etcd request to tell)."""
        return (self.local.identity(), int(time.monotonic() // PARITY_PUBLISH_SECONDS))

    def samples(self, *, window_seconds: float) -> list[dict[str, Any]]:
        records = self.local.samples(window_seconds=window_seconds)
        self.unreadable = self.local.unreadable
        cutoff = time.time() - window_seconds
        mine = f"{self.directory}{self.instance}/"
        try:
            published = self.etcd.get_prefix(self.directory)
        except FlagStoreUnavailable as exc:
            log.warning("parity evidence of this instance only: %s", exc.message)
            return records
        for kv in published:
            key = kv_value({"value": kv.get("key")}).decode(errors="replace")
            if key.startswith(mine):
                continue
            try:
                samples = orjson.loads(kv_value(kv))
            except orjson.JSONDecodeError:
                self.unreadable += 1
                continue
            records.extend(
                r
                for r in (samples if isinstance(samples, list) else [])
                if isinstance(r, dict) and sample_time(r) >= cutoff
            )
        records.sort(key=sample_time)
        return records

    def publish(self, window_seconds: float) -> None:
        """Put this instance's recent samples, per endpoint, slimmed and capped."""
        by_endpoint: dict[str, list[dict[str, Any]]] = {}
        for record in self.local.samples(window_seconds=window_seconds):
            by_endpoint.setdefault(str(record.get("endpoint")), []).append(
                {k: record[k] for k in _SLIM_KEYS if k in record}
            )
        for endpoint, records in by_endpoint.items():
            value = orjson.dumps(records[-PARITY_SAMPLES_PER_ENDPOINT:])
            self.etcd.put(f"{self.directory}{self.instance}/{endpoint}", value)

    async def run(self, window_seconds: float, *, leader: Any) -> None:
        """Publish every few seconds while `leader()` says this worker is the instance's
        publisher (its lowest live pid), for the worker's whole life."""
        while True:
            await asyncio.sleep(PARITY_PUBLISH_SECONDS)
            try:
                if leader():
                    await asyncio.to_thread(self.publish, window_seconds)
            except FlagStoreUnavailable:
                pass  # published again when etcd is back
            except Exception:
                log.exception("cannot publish parity evidence; retrying")


def instance_name(port: int) -> str:
    """This instance in the fleet: its host and proxy port."""
    return f"{socket.gethostname()}:{port}"
