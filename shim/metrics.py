"""Prometheus metrics, correct with several workers.

With `PROMETHEUS_MULTIPROC_DIR` set (by `shim serve`, before any worker imports this module;
the directory is wiped at start), each worker writes its values to files there and
`/metrics` builds a fresh registry per scrape that sums them. Without it (tests in one
process), the default registry is used. Flag changes are counted from `audit.jsonl`, the
one record of them, so no worker double-counts a change every worker applies.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shim.errors import ShimError
from shim.jsonl import Lines

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "shim_requests_total",
    "Requests answered, by endpoint, client face, serving backend and status class.",
    ["endpoint", "face", "backend", "status_class"],
)
LATENCY = Histogram(
    "shim_request_duration_seconds",
    "Time from request to the last byte of the answer, by endpoint and backend.",
    ["endpoint", "backend"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "shim_upstream_errors_total",
    "Backend failures, rescued by a fallback or not, by backend and kind (backend_unreachable, "
    "backend_timeout, bad_backend_answer, backend_error, status_5xx).",
    ["backend", "kind"],
)
UPSTREAM_RETRIES = Counter(
    "shim_upstream_retries_total",
    "Requests sent again on a new connection after a pooled one failed before any answer.",
    ["backend"],
)
TRANSLATIONS = Counter(
    "shim_translations_total",
    "Requests translated between dialects, by endpoint and direction (client->backend).",
    ["endpoint", "direction"],
)
TRANSLATION_FAILURES = Counter(
    "shim_translation_failures_total",
    "Bodies that could not be translated, by endpoint and side (client or backend).",
    ["endpoint", "side"],
)
FLAG_LOAD_ERRORS = Counter(
    "shim_flag_load_errors_total", "Flag files a worker refused to apply (corrupt, half-written)."
)
FLAG_GENERATION = Gauge(
    "shim_flag_generation",
    "Flag generation served (the highest among live workers).",
    multiprocess_mode="livemax",
)
FLAG_SERVING = Gauge(
    "shim_flag_serving",
    "1 for the backend serving each endpoint, 0 for the other.",
    ["endpoint", "backend"],
    multiprocess_mode="livemax",
)
FLAG_PERCENT = Gauge(
    "shim_flag_percent",
    "Canary percent of each endpoint's callers sent to Go; -1 when no canary is set.",
    ["endpoint"],
    multiprocess_mode="livemax",
)
FLAG_PIN_CONFLICT = Gauge(
    "shim_flag_pin_conflict",
    "1 when an environment pin overrides a different runtime flag (a restart keeps the pin).",
    ["endpoint"],
    multiprocess_mode="livemax",
)
PARITY_COMPARISONS = Counter(
    "shim_parity_comparisons_total",
    "Shadow comparisons, by endpoint and result (match, mismatch, error).",
    ["endpoint", "result"],
)
PARITY_COSINE = Histogram(
    "shim_parity_cosine",
    "Lowest per-vector cosine of each embed comparison.",
    ["endpoint"],
    buckets=(0.5, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 1.0),
)
PARITY_RECALL = Histogram(
    "shim_parity_recall",
    "recall@k of ids of each search comparison.",
    ["endpoint"],
    buckets=(0.5, 0.8, 0.9, 0.95, 0.99, 1.0),
)
SHADOW_SKIPPED = Counter(
    "shim_shadow_skipped_total",
    "Shadows not sent, by endpoint and reason (saturated, too_large, sampled_out, ...).",
    ["endpoint", "reason"],
)

GUARD_ROLLBACKS = Counter(
    "shim_guard_rollbacks_total",
    "Endpoints the guard rolled back to Rust.",
    ["endpoint"],
)
FALLBACKS = Counter(
    "shim_fallbacks_total",
    "Requests retried on the other backend, by endpoint, direction and cause.",
    ["endpoint", "direction", "cause"],
)
FALLBACKS_DENIED = Counter(
    "shim_fallbacks_denied_total",
    "Failed requests that could not be retried, by endpoint and reason.",
    ["endpoint", "reason"],
)

ADMISSION_SHED = Counter(
    "shim_admission_shed_total",
    "Requests shed before reaching a backend, by backend and reason (wait_budget, "
    "queue_full, caller_share; worker_busy: past limit_concurrency, backend none).",
    ["backend", "reason"],
)
ADMISSION_WAIT = Histogram(
    "shim_admission_wait_seconds",
    "Time a request waited for a slot to its backend (requests that had to wait).",
    ["backend"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ADMISSION_LIMIT = Gauge(
    "shim_admission_limit",
    "The adaptive in-flight limit to each backend (summed over live workers).",
    ["backend"],
    multiprocess_mode="livesum",
)
ADMISSION_INFLIGHT = Gauge(
    "shim_admission_inflight",
    "Requests in flight to each backend (summed over live workers).",
    ["backend"],
    multiprocess_mode="livesum",
)
ADMISSION_QUEUED = Gauge(
    "shim_admission_queued",
    "Requests waiting for a slot to each backend (summed over live workers).",
    ["backend"],
    multiprocess_mode="livesum",
)

FLUSH_SECONDS = 1.0


class RequestTally:
    """This worker's request counts and latencies since the last flush, in plain numbers.

    In multiprocess mode every `inc()` takes a lock, checks the pid and writes a memory-mapped
    file: three of them per request cost ~10 us, the largest single item of the pass-through
    path (measured by switching it off under `shim bench`). Tallied here and added to the
    shared metrics once a second (`flush`), a scrape is at most that much behind.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        # per (endpoint, backend): a count per bucket (the last is +Inf), then the sum
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.events: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._counters: dict[tuple[str, str, str, str], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}

    def count(self, counter: Counter, labels: tuple[str, ...]) -> None:
        key = (counter, labels)
        self.events[key] = self.events.get(key, 0) + 1

    def observe(
        self,
        endpoint: str | None,
        face: str | None,
        backend: str | None,
        status: int,
        seconds: float,
    ) -> None:
        status_class = "disconnected" if status == 499 else f"{status // 100}xx"
        key = (endpoint or "none", face or "none", backend or "none", status_class)
        self.counts[key] = self.counts.get(key, 0) + 1
        if endpoint and backend:
            cell = self.latency.get((endpoint, backend))
            if cell is None:
                cell = self.latency[(endpoint, backend)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            cell[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # first bucket with bound >= it
            cell[-1] += seconds

    def flush(self) -> None:
        """Add what was tallied to the metrics every scrape reads."""
        counts, self.counts = self.counts, {}
        latency, self.latency = self.latency, {}
        events, self.events = self.events, {}
        for (family, labels), count in events.items():
            family.labels(*labels).inc(count)
        for request, count in counts.items():
            counter = self._counters.get(request)
            if counter is None:
                counter = self._counters[request] = REQUESTS.labels(*request)
            counter.inc(count)
        for served, cell in latency.items():
            histogram = self._histograms.get(served)
            if histogram is None:
                histogram = self._histograms[served] = LATENCY.labels(*served)
            add_to_histogram(histogram, cell[:-1], cell[-1])


def add_to_histogram(histogram: Histogram, bucket_counts: list[float], total: float) -> None:
    """Observations already sorted into buckets, added in one step per bucket.

    prometheus_client has no public bulk observe; its children keep `_sum` and `_buckets`
    values (tests/test_operations.py checks the result against plain `observe` calls).
    """
    histogram._sum.inc(total)
    for index, count in enumerate(bucket_counts):
        if count:
            histogram._buckets[index].inc(count)


_tally = RequestTally()


def observe_request(
    endpoint: str | None, face: str | None, backend: str | None, status: int, seconds: float
) -> None:
    """Count one answered request (tallied in this worker; see RequestTally)."""
    _tally.observe(endpoint, face, backend, status, seconds)


def count(counter: Counter, *labels: str) -> None:
    """Count one event of a per-request counter (tallied in this worker; see RequestTally)."""
    _tally.count(counter, labels)


class AdmissionView(Protocol):
    """What the gauges read of a backend's admission (read-only)."""

    @property
    def limit(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    @property
    def queued(self) -> int: ...


_admissions: dict[str, AdmissionView] = {}


def watch_admission(backend: str, admission: AdmissionView) -> None:
    """Publish this backend's limit, in-flight and queue gauges at every flush."""
    _admissions[backend] = admission


def flush() -> None:
    """Publish this worker's tallied requests now (before a scrape, and at exit)."""
    _tally.flush()
    for backend, admission in _admissions.items():
        ADMISSION_LIMIT.labels(backend).set(admission.limit)
        ADMISSION_INFLIGHT.labels(backend).set(admission.inflight)
        ADMISSION_QUEUED.labels(backend).set(admission.queued)


def observe_comparison(endpoint: str, measured: Mapping[str, float], *, matched: bool) -> None:
    """Count one shadow comparison and its cosine / recall (a `Comparison`'s metrics)."""
    PARITY_COMPARISONS.labels(endpoint, "match" if matched else "mismatch").inc()
    if "min_cosine" in measured:
        PARITY_COSINE.labels(endpoint).observe(measured["min_cosine"])
    if "recall" in measured:
        PARITY_RECALL.labels(endpoint).observe(measured["recall"])


AuditSource = Callable[[], Lines]


class AuditCollector(Collector):
    """`shim_flag_changes_total{endpoint, actor}` counted from the audit trail at scrape time."""

    def __init__(self, audit: AuditSource) -> None:
        self.audit = audit  # the flag store's trail (`FlagBackend.audit`)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "shim_flag_changes",
            "Flag changes recorded in audit.jsonl, by endpoint and actor kind.",
            labels=["endpoint", "actor"],
        )
        tally: Tally[tuple[str, str]] = Tally()
        try:
            records = self.audit().records
        except ShimError:  # etcd away: this scrape goes without the count
            return
        for record in records:
            actor = str(record.get("actor") or "unknown").split(":", 1)[0]
            tally[(str(record.get("endpoint")), actor)] += 1
        for (endpoint, actor), count in sorted(tally.items()):
            family.add_metric([endpoint, actor], count)
        yield family


def _registry() -> CollectorRegistry:
    """Every worker's metrics (multiprocess mode), else this process's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # not annotated upstream
    else:
        registry.register(_Default())
    return registry


def render(audit: AuditSource) -> bytes:
    """The metrics text for one scrape (`audit`: the flag store's trail)."""
    registry = _registry()
    registry.register(AuditCollector(audit))
    return generate_latest(registry)


def totals(sample: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """A counter's value summed over every worker, by `labels` (e.g. `shim_requests_total`
    by endpoint and backend): what /metrics serves, read for the operator page."""
    found: dict[tuple[str, ...], float] = {}
    for family in _registry().collect():
        for s in family.samples:
            if s.name == sample:
                key = tuple(s.labels.get(label, "") for label in labels)
                found[key] = found.get(key, 0.0) + s.value
    return found


class _Default(Collector):
    """The process's default registry, wrapped so the audit collector can join it."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # not annotated upstream
