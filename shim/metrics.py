"""Prometheus metrics, correct with several workers.

With `PROMETHEUS_MULTIPROC_DIR` set (by `shim serve`, before any worker imports this module;
the directory is wiped at start), each worker writes its values to files there and
`/metrics` builds a fresh registry per scrape that sums them. Without it (tests in one
process), the default registry is used. Flag changes are counted from `audit.jsonl`, the
one record of them, so no worker double-counts a change every worker applies.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

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

from shim.compare import Comparison
from shim.flags import FlagState, read_audit, resolve
from shim.routes import RouteTable
from shim.types import BACKENDS, Backend

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
    "Backend failures, by backend and kind (unreachable, timeout, bad answer).",
    ["backend", "kind"],
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

_requests: dict[tuple[str, str, str, str], Counter] = {}
_latency: dict[tuple[str, str], Histogram] = {}


def observe_request(
    endpoint: str | None, face: str | None, backend: str | None, status: int, seconds: float
) -> None:
    """Count one answered request (label children cached: this runs on every request)."""
    status_class = "disconnected" if status == 499 else f"{status // 100}xx"
    key = (endpoint or "none", face or "none", backend or "none", status_class)
    child = _requests.get(key)
    if child is None:
        child = _requests[key] = REQUESTS.labels(*key)
    child.inc()
    if endpoint and backend:
        timing = _latency.get((endpoint, backend))
        if timing is None:
            timing = _latency[(endpoint, backend)] = LATENCY.labels(endpoint, backend)
        timing.observe(seconds)


def observe_comparison(endpoint: str, comparison: Comparison, *, matched: bool) -> None:
    """Count one shadow comparison and its cosine / recall."""
    PARITY_COMPARISONS.labels(endpoint, "match" if matched else "mismatch").inc()
    if "min_cosine" in comparison.metrics:
        PARITY_COSINE.labels(endpoint).observe(comparison.metrics["min_cosine"])
    if "recall" in comparison.metrics:
        PARITY_RECALL.labels(endpoint).observe(comparison.metrics["recall"])


def observe_flags(state: FlagState, routes: RouteTable, pins: dict[str, Backend]) -> None:
    """Publish the flag state this worker now serves."""
    FLAG_GENERATION.set(state.generation)
    for name in routes.routes:
        effective = resolve(state, routes, pins, name)
        for backend in BACKENDS:
            FLAG_SERVING.labels(name, backend).set(1 if effective.flag.serve == backend else 0)
        conflict = bool(
            effective.pinned_by
            and effective.runtime
            and effective.runtime.serve != effective.flag.serve
        )
        FLAG_PIN_CONFLICT.labels(name).set(1 if conflict else 0)


class AuditCollector(Collector):
    """`shim_flag_changes_total{endpoint, actor}` counted from the audit trail at scrape time."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "shim_flag_changes",
            "Flag changes recorded in audit.jsonl, by endpoint and actor kind.",
            labels=["endpoint", "actor"],
        )
        tally: Tally[tuple[str, str]] = Tally()
        for record in read_audit(self.state_dir):
            actor = str(record.get("actor") or "unknown").split(":", 1)[0]
            tally[(str(record.get("endpoint")), actor)] += 1
        for (endpoint, actor), count in sorted(tally.items()):
            family.add_metric([endpoint, actor], count)
        yield family


def render(state_dir: Path) -> bytes:
    """The metrics text for one scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(AuditCollector(state_dir))
    return generate_latest(registry)


class _Default(Collector):
    """The process's default registry, wrapped so the audit collector can join it."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
