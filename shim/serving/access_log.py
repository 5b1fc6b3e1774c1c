"""What the pipeline reports about a finished request: one JSON access-log line and the
translation-failure counters (backend failures are counted per attempt, by the proxy)."""

from __future__ import annotations

import logging

import orjson

from shim import metrics
from shim.serving.exchange import Exchange

access_log = logging.getLogger("shim.access")


CLIENT_BODY_FAILURES = frozenset({"bad_json", "bad_shape"})


def observe_failure(ex: Exchange) -> None:
    """Count a failed translation (backend failures are counted per attempt, in `_attempt`,
    so a failure that a fallback rescued is counted too)."""
    if ex.translated and ex.endpoint:
        if ex.error in CLIENT_BODY_FAILURES:
            metrics.TRANSLATION_FAILURES.labels(ex.endpoint, "client").inc()
        elif ex.error == "bad_backend_answer":
            metrics.TRANSLATION_FAILURES.labels(ex.endpoint, "backend").inc()


def write_access_log(ex: Exchange, seconds: float) -> None:
    """One JSON line per request, with the request id."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    record = {
        "request_id": ex.request_id,
        "method": ex.method,
        "path": ex.path,
        "endpoint": ex.endpoint,
        "face": ex.client,
        "backend": ex.backend,
        "status": ex.status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_out": ex.bytes_out,
    }
    if ex.error:
        record["error"] = ex.error
    access_log.info(orjson.dumps(record).decode())
