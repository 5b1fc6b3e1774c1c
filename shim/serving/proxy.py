"""The request pipeline: match -> choose backend -> admit -> attempt, and fall back.

A plain ASGI callable (no Starlette Request/Response objects on this path: they cost
~0.14 ms CPU per request). This module is the policy: which route, which backend (flag or
sticky canary), whether the request may be repeated or fall back to the other backend, the
admission gate and the guard around each attempt. How one attempt reaches a backend
(stream untouched, or translate once) is `shim.serving.forward`; bodies, JSON safety, disconnects,
the request's record and its access log are their own modules beside it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

import orjson

from shim import headers as header_policy
from shim import metrics
from shim.cutover.canary import canary_backend
from shim.cutover.fallback import FallbackStatus, RetryBudget
from shim.cutover.flag_view import FlagView
from shim.cutover.guard import Guard
from shim.errors import (
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ShimError,
)
from shim.routes import RouteTable
from shim.serving.access_log import observe_failure, write_access_log
from shim.serving.admission import Admission, GradientLimit, LoopLag, Shed
from shim.serving.bodies import Body, CappedStream, read_body, request_body
from shim.serving.caller import caller_of
from shim.serving.disconnect import CancelOnDisconnect, ClientDisconnected
from shim.serving.exchange import Call, Exchange, send_error
from shim.serving.forward import Forwarder, raw_header
from shim.serving.shadow import Capture, Shadower
from shim.serving.upstream import Upstream
from shim.settings import Settings
from shim.types import BACKENDS, Backend, Receive, Scope, Send

log = logging.getLogger("shim.proxy")

MEASURED_BYTES = 1024 * 1024  # answers up to this size time the backend (admission)


class Proxy(Forwarder):
    """The proxy port's ASGI app for every route-table path."""

    def __init__(
        self,
        routes: RouteTable,
        flags: FlagView,
        upstream: Upstream,
        settings: Settings,
        shadower: Shadower,
        guard: Guard,
    ) -> None:
        self.routes = routes
        self.flags = flags
        self.upstream = upstream
        self.shadower = shadower
        self.guard = guard
        self.budget = RetryBudget(
            ratio=settings.fallback_budget_ratio, burst=settings.fallback_budget_burst
        )
        self.caller_header = settings.canary_key_header.lower().encode("latin-1")
        ceiling = settings.max_connections_per_backend
        lag = LoopLag()  # one per worker, for both backends' limits
        self.admission: dict[Backend, Admission] = {
            backend: Admission(
                backend,
                GradientLimit(
                    floor=min(settings.admission_floor, ceiling),
                    ceiling=ceiling,
                    tolerance=settings.admission_tolerance,
                    lag=lag.mean,
                ),
                queue_limit=settings.queue_limit,
            )
            for backend in BACKENDS
        }
        for backend, admission in self.admission.items():
            metrics.watch_admission(backend, admission)
        self.total_timeout = settings.total_timeout
        # A wait for a slot may take at most half the route's total timeout, if it has one.
        self.queue_budget = {
            route.name: min(
                route.queue_timeout or settings.queue_timeout,
                (route.total_timeout or settings.total_timeout or math.inf) / 2,
            )
            for route in routes.routes.values()
        }
        self.max_json_bytes = settings.max_json_bytes
        self.max_backend_json_bytes = max(settings.max_json_bytes * 8, 128 * 1024 * 1024)
        self.log_access = settings.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")
        # Some servers (and httpx's ASGITransport) leave the query string in raw_path.
        path = raw_path.partition(b"?")[0].decode("latin-1") if raw_path else scope["path"]
        exchange = Exchange(scope["method"], path, time.perf_counter())
        try:
            await self._handle(scope, receive, send, exchange)
        except ClientDisconnected:
            exchange.status, exchange.error = 499, "client_disconnected"
        except ShimError as exc:
            exchange.error = exc.code
            if exchange.response_started:
                # Headers are gone: the only honest signal left is a broken connection.
                log.warning("aborting response %s mid-body: %s", exchange.request_id, exc.message)
                raise
            await send_error(send, exc, exchange)
        finally:
            seconds = time.perf_counter() - exchange.started
            metrics.observe_request(
                exchange.endpoint, exchange.client, exchange.backend, exchange.status, seconds
            )
            if exchange.error:
                observe_failure(exchange)
            if self.log_access:
                write_access_log(exchange, seconds)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        match = self.routes.match(ex.path)
        if match is None:
            ex.request_id = _header(scope, b"x-request-id") or ""
            raise NotFound(
                f"no route for {ex.path}: the shim only forwards its route table's paths"
            )
        route = match.route
        ex.endpoint, ex.client = route.name, match.client
        if ex.method not in match.face.methods:
            ex.request_id = _header(scope, b"x-request-id") or ""
            allowed = ", ".join(sorted(match.face.methods))
            raise MethodNotAllowed(
                f"{ex.method} is not allowed on {ex.path} (allowed: {allowed})",
                allowed=match.face.methods,
            )
        client_host = scope["client"][0] if scope.get("client") else None
        request = header_policy.client_request(
            scope["headers"],
            client_host=client_host,
            scheme=scope["scheme"],
            caller_header=self.caller_header,
        )
        ex.request_id = request.request_id
        backend = self._choose(route.name, caller_of(request, client_host))
        ex.backend = backend
        if route.needs_rewrite(match.client, backend):
            body: Body = await read_body(
                receive, limit=self.max_json_bytes, declared=request.content_length
            )
        else:
            body = await request_body(
                receive,
                ex.method,
                limit=self.max_json_bytes if route.json_body else None,
                declared=request.content_length,
            )
        capture = None
        if self.flags.shadowing(route.name) and self.shadower.wanted(route, ex.method):
            capture = Capture(
                route,
                match.client,
                backend,
                ex.method,
                dict(match.params),
                scope.get("query_string") or b"",
                request.forward,
                request.request_id,
                self.shadower.limit,
            )
            body = _tee_request(body, capture)
        call = Call(scope, send, ex, match, request, body, capture)
        self.budget.earn()
        if isinstance(body, bytes | None):
            # The body is in: from now on receive() only says whether the client is still there.
            with CancelOnDisconnect(scope, receive):
                await self._exchange(call, backend)
        else:
            await self._exchange(call, backend)  # a streamed upload notices a disconnect itself
        if capture is not None and call.capture is not None:
            self.shadower.submit(capture)  # after the client has its whole answer

    async def _exchange(self, call: Call, backend: Backend) -> None:
        """An attempt on `backend`, and one on the other backend when it may fall back."""
        ex, route = call.ex, call.match.route
        try:
            await self._attempt(call, backend)
        except (BackendUnreachable, BackendTimeout, FallbackStatus) as failure:
            other: Backend = "rust" if backend == "go" else "go"
            if ex.response_started or not self._may_fall_back(call):
                raise
            if not self.budget.spend():
                metrics.FALLBACKS_DENIED.labels(route.name, "budget").inc()
                if isinstance(failure, FallbackStatus):
                    raise BackendError(
                        f"the {backend} backend answered {failure.status} and the fallback "
                        "retry budget is spent"
                    ) from None
                raise
            cause = (
                f"status_{failure.status}"
                if isinstance(failure, FallbackStatus)
                else (failure.code)
            )
            metrics.FALLBACKS.labels(route.name, f"{backend}->{other}", cause).inc()
            ex.fallback, ex.backend = f"{backend}->{other}", other
            call.capture = None  # a fallback answer is not a shadow comparison
            await self._attempt(call, other)
            if ex.status < 500:
                self.budget.refund()

    def _choose(self, endpoint: str, caller: str) -> Backend:
        """The flag's backend, or the caller's sticky canary side when a percent is set."""
        percent = self.flags.canary(endpoint)
        if percent is None:
            return self.flags.serving(endpoint)
        return canary_backend(endpoint, caller, percent)

    def _may_fall_back(self, call: Call) -> bool:
        """Idempotent, both backends, body still at hand, the adapter agrees, budget left."""
        return (
            self._replayable(call, count=True)
            and not call.match.route.go_only
            and self.budget.available()
        )

    def _replayable(self, call: Call, *, count: bool = False) -> bool:
        """May this request be sent again: idempotent, body at hand, and where the adapter
        has a rule (SQL: read-only statements), this request passes it."""
        route, ex = call.match.route, call.ex
        if ex.method not in route.idempotent_methods or not isinstance(call.body, bytes | None):
            if count:
                metrics.FALLBACKS_DENIED.labels(route.name, "not_retryable").inc()
            return False
        if route.repeat_rule is not None:
            try:
                request = orjson.loads(call.body or b"")
            except orjson.JSONDecodeError:
                request = None
            if not route.may_repeat(request, call.match.client):
                if count:
                    metrics.FALLBACKS_DENIED.labels(route.name, "not_read_only").inc()
                return False
        return True

    async def _attempt(self, call: Call, backend: Backend) -> None:
        """One try on `backend`, once admitted (`admission`); the guard hears how Go did.

        A shed request never reaches the backend, so neither the guard nor the fallback
        hears of it: it says nothing about the backend's health.
        """
        route = call.match.route
        gate = self.admission[backend]
        waited = 0.0
        if not gate.try_enter():
            client = call.scope.get("client")
            caller = caller_of(call.request, client[0] if client else None)
            try:
                waited = await gate.enter(caller, self.queue_budget[route.name])
            except Shed as shed:
                metrics.count(metrics.ADMISSION_SHED, backend, shed.reason)
                raise Overloaded(shed.message) from None
            metrics.ADMISSION_WAIT.labels(backend).observe(waited)
        started = time.perf_counter()
        measured = True  # whether this attempt's time says how loaded the backend is
        try:
            total = route.total_timeout or self.total_timeout
            if waited and total:  # the wait counts towards the route's total timeout
                async with asyncio.timeout(total - waited):
                    await self._send_to(call, backend)
            else:
                await self._send_to(call, backend)
        except TimeoutError:
            metrics.count(metrics.UPSTREAM_ERRORS, backend, "backend_timeout")
            if backend == "go":
                self.guard.observe(route.name, ok=False, seconds=time.perf_counter() - started)
            raise BackendTimeout(
                f"the {backend} backend did not answer within the route's total timeout of "
                f"{total:g} s, {waited:.2f} s of it spent waiting for a slot in the shim"
            ) from None
        except (BackendError, FallbackStatus) as failure:
            if isinstance(call.body, CappedStream) and call.body.refused is not None:
                measured = False
                raise call.body.refused from None  # the client's fault, not the backend's
            kind = failure.code if isinstance(failure, BackendError) else "status_5xx"
            metrics.count(metrics.UPSTREAM_ERRORS, backend, kind)  # rescued by fallback or not
            if backend == "go":
                self.guard.observe(route.name, ok=False, seconds=time.perf_counter() - started)
            measured = not isinstance(failure, BackendUnreachable)
            raise
        except BaseException:
            measured = False  # cancelled: the client left
            raise
        finally:
            # A streamed upload or a large answer times the client's network, not the backend.
            measured = measured and isinstance(call.body, bytes | None)
            measured = measured and call.ex.bytes_out <= MEASURED_BYTES
            gate.leave(route.name, time.perf_counter() - started if measured else None)
        ok = call.ex.status < 500
        if not ok:
            metrics.count(metrics.UPSTREAM_ERRORS, backend, "status_5xx")
        if backend == "go":
            self.guard.observe(route.name, ok=ok, seconds=time.perf_counter() - started)

    async def _send_to(self, call: Call, backend: Backend) -> None:
        if call.match.route.needs_rewrite(call.match.client, backend):
            await self._translate(call, backend)
        else:
            await self._stream(call, backend)


def _tee_request(body: Body, capture: Capture) -> Body:
    """Keep a copy of the request body for the shadow while it goes upstream."""
    if body is None or isinstance(body, bytes):
        capture.keep_request(body or b"")
        return body

    async def copying() -> AsyncIterator[bytes]:
        async for chunk in body:
            capture.keep_request(chunk)
            yield chunk

    return copying()


def _header(scope: Scope, name: bytes) -> str | None:
    value = raw_header(scope["headers"], name)
    return value.decode("latin-1") if value is not None else None
