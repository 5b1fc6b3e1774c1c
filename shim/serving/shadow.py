"""Shadow traffic: mirror a request to the other backend, compare, record.

The client is answered by the serving backend first; only then is a copy of its request,
translated into the other backend's dialect, sent in a background task that the client
never waits for. Bounded per worker: sample rate, in-flight shadows, a timeout, and a cap
on the bodies kept for comparison; past any bound the shadow is skipped and counted, never
queued. Shadow requests carry `X-Shim-Shadow: 1`. Non-idempotent requests are never mirrored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from yarl import URL

from adapters.errors import AdapterError
from shim import metrics
from shim.errors import BackendError
from shim.parity.compare import (
    Comparison,
    Difference,
    blocking,
    compare,
    compare_bytes,
    status_difference,
)
from shim.parity.verdicts import ParityStore, excerpt
from shim.routes import Route
from shim.serving.backend_url import backend_url
from shim.serving.bodies import read_capped
from shim.serving.upstream import Upstream, decode_body, translate_errors
from shim.serving.vector_wire import parse_answer
from shim.settings import Settings
from shim.timestamps import iso_utc
from shim.types import Backend

log = logging.getLogger("shim.shadow")
SHADOW_HEADER = ("X-Shim-Shadow", "1")
NOT_MIRRORED = frozenset({"accept-encoding", "content-type", "content-length"})
INLINE_COMPARE_BYTES = 512 * 1024  # both answers; larger comparisons go to a thread
WRITE_EVERY_SECONDS = 0.5  # parity records are written in batches this often
BANKED_SECONDS = 5.0  # the work budget saves up to this many seconds' worth of its share


def other(backend: Backend) -> Backend:
    return "go" if backend == "rust" else "rust"


@dataclass(slots=True)
class Capture:
    """What the proxy keeps of one exchange so it can be mirrored after the client is answered."""

    route: Route
    client: Backend
    primary: Backend
    method: str
    params: dict[str, str]
    query: bytes
    headers: list[tuple[str, str]]
    request_id: str
    limit: int
    request_body: bytearray = field(default_factory=bytearray)
    primary_status: int = 0
    primary_body: bytearray = field(default_factory=bytearray)
    primary_encoding: str = "identity"
    overflow: bool = False

    def keep_request(self, chunk: bytes) -> None:
        self._keep(self.request_body, chunk)

    def keep_answer(self, chunk: bytes) -> None:
        self._keep(self.primary_body, chunk)

    def _keep(self, buffer: bytearray, chunk: bytes) -> None:
        if self.overflow:
            return
        if len(buffer) + len(chunk) > self.limit:
            self.overflow = True
            buffer.clear()
        else:
            buffer += chunk


class WorkBudget:
    """Seconds of a worker's time that shadow work may spend: `share` of the wall clock,
    with up to `BANKED_SECONDS` of it saved for a burst (a quiet worker compares a burst of
    ~100 embed requests in full; under sustained load the share holds).

    Translating and comparing a shadow runs on the event loop (a few hundred microseconds for
    an 8x768 embed); spent without bound at high load it would delay every client behind it.
    """

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.clock = clock
        self.capacity = share * BANKED_SECONDS
        self.tokens = self.capacity
        self.stamp = clock()

    def available(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.share)
        self.stamp = now
        return self.tokens > 0

    def spend(self, seconds: float) -> None:
        self.tokens -= seconds


class Shadower:
    """One worker's shadow traffic: decides, bounds, runs and records."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        store: ParityStore,
        *,
        on_compared: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.on_compared = on_compared
        self.max_inflight = settings.shadow_max_inflight
        self.timeout = settings.shadow_timeout
        self.limit = settings.shadow_max_body_bytes
        self.budget = WorkBudget(settings.shadow_cpu_share)
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        self._unwritten: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def wanted(self, route: Route, method: str) -> bool:
        """Should this request be captured for a shadow? (The flag is already on.)"""
        if not route.may_shadow(method):
            return False  # writes, chat: never mirrored
        if self._random.random() >= route.parity.sample_rate:
            skipped(route.name, "sampled_out")
            return False
        if not self.budget.available():
            skipped(route.name, "budget")
            return False
        if self.inflight >= self.max_inflight:
            skipped(route.name, "saturated")
            return False
        return True

    def submit(self, capture: Capture) -> None:
        """Start the shadow in the background; the caller has already answered its client."""
        if capture.overflow:
            skipped(capture.route.name, "too_large")
            return
        if self.inflight >= self.max_inflight:
            skipped(capture.route.name, "saturated")
            return
        task = asyncio.get_running_loop().create_task(self._run(capture))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        if self._writer is not None:
            tasks.append(self._writer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._unwritten:  # shutting down: nothing else is waiting for the loop
            self._write(self._unwritten)
            self._unwritten = []

    async def _run(self, capture: Capture) -> None:
        route = capture.route
        started = time.perf_counter()
        try:
            payload = shadow_payload(capture)
        except UnShadowable as exc:
            skipped(route.name, exc.reason)
            return
        target = other(capture.primary)
        url = self.url_for(route, target, capture)
        headers = [h for h in capture.headers if h[0].lower() not in NOT_MIRRORED]
        headers.append(SHADOW_HEADER)
        if route.adapter is not None:
            headers.append(("Content-Type", "application/json"))
        primary_body = decoded(bytes(capture.primary_body), capture.primary_encoding)
        self.budget.spend(time.perf_counter() - started)
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self.fetch(
                    route, target, capture.method, url, headers, payload
                )
                repeat = None
                if route.parity.noise_rate and self._random.random() < route.parity.noise_rate:
                    repeat = await self.fetch(route, target, capture.method, url, headers, payload)
        except (BackendError, TimeoutError) as exc:
            message = getattr(exc, "message", None) or f"the {target} shadow timed out"
            self._keep(judge_sample(capture, error=message))
            return
        answers = {capture.primary: (capture.primary_status, primary_body), target: (status, body)}
        started = time.perf_counter()
        if len(primary_body) + len(body) <= INLINE_COMPARE_BYTES:
            # On the loop: a few hundred microseconds of numpy. In a thread, every numpy call
            # would hand the GIL over and stall the loop for up to the switch interval (5 ms).
            record = judge_sample(capture, answers=answers)
            if repeat is not None:
                self._keep(judge_noise(capture, target, (status, body), repeat), compared=False)
            self.budget.spend(time.perf_counter() - started)
        else:
            record = await asyncio.to_thread(judge_sample, capture, answers=answers)
            if repeat is not None:
                answer = (status, body)
                noise = await asyncio.to_thread(judge_noise, capture, target, answer, repeat)
                self._keep(noise, compared=False)
        self._keep(record)

    def _keep(self, record: dict[str, Any], *, compared: bool = True) -> None:
        """Queue a record for the parity file (written in batches, off the loop)."""
        if compared:
            self._compared(record)
        self._unwritten.append(record)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(WRITE_EVERY_SECONDS)
        records, self._unwritten = self._unwritten, []  # taken on the loop, written off it
        await asyncio.to_thread(self._write, records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        try:
            self.store.append_many(records)
        except OSError as exc:
            log.error("cannot record %d parity samples: %s", len(records), exc)

    def _compared(self, record: dict[str, Any]) -> None:
        if self.on_compared is not None:
            self.on_compared(record["endpoint"], bool(record.get("matched")))

    def url_for(self, route: Route, backend: Backend, capture: Capture) -> URL:
        base = self.upstream.base_urls[backend]
        return backend_url(base, route.faces[backend], capture.params, capture.query)

    async def fetch(
        self,
        route: Route,
        backend: Backend,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        payload: bytes | None,
    ) -> tuple[int, bytes]:
        with translate_errors(backend, url):
            async with self.upstream.request(
                backend, route, method, url, headers=headers, data=payload
            ) as response:
                raw = await read_capped(
                    response,
                    limit=self.limit,
                    refuse=BackendError,
                    what=f"the {backend} shadow answer",
                )
                encoding = response.headers.get("Content-Encoding", "identity")
                return response.status, decoded(raw, encoding)


class UnShadowable(Exception):
    """This request cannot be mirrored (its adapter says no to repeating it, or it does not
    translate)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shadow_payload(capture: Capture) -> bytes | None:
    """The client's request in the other backend's dialect."""
    route, body = capture.route, bytes(capture.request_body)
    if route.adapter is None:
        return body or None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UnShadowable("untranslatable") from None
    if not route.may_repeat(document, capture.client):
        raise UnShadowable("not_read_only")  # the metric's reason, as the README lists it
    target = other(capture.primary)
    if capture.client == target:
        return body
    try:
        translated = route.adapter.translate_request(
            document, client=capture.client, backend=target, options=route.options
        )
    except AdapterError:
        raise UnShadowable("untranslatable") from None
    return orjson.dumps(translated, option=orjson.OPT_SERIALIZE_NUMPY)


def canonical(route: Route, backend: Backend, body: bytes, dialect: Backend = "rust") -> Any:
    """An answer of `backend` in `dialect` (raw bytes for routes without adapter)."""
    if route.adapter is None:
        return body
    return route.adapter.translate_response(
        parse_answer(route.adapter, body, backend),
        client=dialect,
        backend=backend,
        options=route.options,
    ).body


Answer = tuple[Backend, int, bytes]  # the backend that answered, its status, its body


def compare_answers(
    route: Route, answers: dict[Backend, tuple[int, bytes]], *, client: Backend = "rust"
) -> Comparison:
    """Both backends' answers, brought to one dialect and compared with the route's comparator.

    The dialect is the adapter's choice for this client's face: Rust for the built-in
    adapters (their comparators read Rust fields), the client's own for a jq endpoint."""
    return compare_pair(route, ("rust", *answers["rust"]), ("go", *answers["go"]), client=client)


def compare_pair(route: Route, first: Answer, second: Answer, *, client: Backend) -> Comparison:
    """Two answers compared as the `rust` and `go` sides (a noise check passes two answers
    of one backend)."""
    (rust_from, rust_status, rust_body), (go_from, go_status, go_body) = first, second
    if rust_status != go_status:
        return status_difference(rust_status, go_status)
    comparator = route.parity.comparator
    if not 200 <= rust_status < 300:
        return Comparison(comparator)  # the same error on both sides
    if route.adapter is None or comparator == "bytes":
        return compare_bytes(rust_body, go_body)
    documents = {}
    dialect = route.adapter.compared_in(client)
    for side, backend, body in (("rust", rust_from, rust_body), ("go", go_from, go_body)):
        try:
            documents[side] = canonical(route, backend, body, dialect)
        except (orjson.JSONDecodeError, AdapterError) as exc:
            failed = Comparison(comparator)
            failed.differences.append(Difference("$", "error", None, f"{backend}: {exc}"))
            return failed
    judged, score = route.comparing.fields(dialect)
    return compare(
        comparator,
        documents["rust"],
        documents["go"],
        tolerance=route.parity.tolerance,
        ignore=route.parity.ignore,
        field=judged,
        score=score,
    )


def judge_sample(
    capture: Capture,
    *,
    answers: dict[Backend, tuple[int, bytes]] | None = None,
    error: str | None = None,
    kind: str = "shadow",
) -> dict[str, Any]:
    """Compare (unless the shadow failed) and count it: the parity record, not yet stored."""
    route = capture.route
    record: dict[str, Any] = base_record(route.name, kind, capture.request_id)
    record.update(primary=capture.primary, client=capture.client)
    if error is not None:
        record.update(
            error=error,
            blocking=[],
            metrics={},
            matched=False,
            request=excerpt(bytes(capture.request_body)),
        )
        metrics.PARITY_COMPARISONS.labels(route.name, "error").inc()
    else:
        assert answers is not None
        comparison = compare_answers(route, answers, client=capture.client)
        problems = blocking(comparison)
        record.update(comparison.to_dict())
        record["compared_in"] = route.adapter.compared_in(capture.client) if route.adapter else None
        record["status"] = {"rust": answers["rust"][0], "go": answers["go"][0]}
        record["blocking"] = [d.to_dict() for d in problems[:20]]
        below = _below_threshold(route, comparison)
        record["matched"] = not problems and not below
        if not record["matched"]:
            record["request"] = excerpt(bytes(capture.request_body))
        metrics.observe_comparison(route.name, comparison.metrics, matched=record["matched"])
    return record


def judge_noise(
    capture: Capture,
    backend: Backend,
    first: tuple[int, bytes],
    second: tuple[int, bytes],
) -> dict[str, Any]:
    """Two answers of the same backend to the same request: whatever differs is noise.

    Returns the noise record, not yet stored."""
    route = capture.route
    comparison = compare_pair(route, (backend, *first), (backend, *second), client=capture.client)
    record = base_record(route.name, "noise", capture.request_id)
    record.update(
        backend=backend,
        metrics=comparison.metrics,
        blocking=[d.to_dict() for d in blocking(comparison)[:20]],
    )
    return record


def base_record(endpoint: str, kind: str, request_id: str) -> dict[str, Any]:
    now = time.time()
    return {
        "ts": now,
        "time": iso_utc(now),
        "endpoint": endpoint,
        "kind": kind,
        "request_id": request_id,
    }


def _below_threshold(route: Route, comparison: Comparison) -> bool:
    found = comparison.metrics
    return ("min_cosine" in found and found["min_cosine"] < route.parity.min_cosine) or (
        "recall" in found and found["recall"] < route.parity.min_recall
    )


def decoded(body: bytes, encoding: str | None) -> bytes:
    """A body as the backend meant it; one that does not decode is compared as it came."""
    try:
        return decode_body(body, encoding)
    except ValueError:
        return body


def skipped(endpoint: str, reason: str) -> None:
    metrics.count(metrics.SHADOW_SKIPPED, endpoint, reason)
