"""The request pipeline: match -> choose backend -> stream bytes, or parse and translate.

A plain ASGI callable (no Starlette Request/Response objects on this path: they cost
~0.14 ms CPU per request). Same-dialect traffic streams both ways untouched, only the path
changes; a route that needs a rewrite reads the JSON body once (capped), translates it with
its adapter and answers in one message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from adapters.errors import AdapterError
from shim import headers as header_policy
from shim import metrics
from shim.admission import Admission, GradientLimit, LoopLag, Shed
from shim.canary import canary_backend
from shim.errors import (
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    BadBackendAnswer,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ShimError,
    render,
)
from shim.fallback import FallbackStatus, RetryBudget
from shim.flag_view import FlagView
from shim.guard import Guard
from shim.routes import RouteMatch, RouteTable
from shim.settings import Settings
from shim.shadow import Capture, Shadower
from shim.types import (
    BACKENDS,
    DISCONNECT_EXTENSION,
    Backend,
    DisconnectSignal,
    Receive,
    Scope,
    Send,
)
from shim.upstream import Upstream, decode_body, translate_errors
from shim.vector_wire import answer_codec

access_log = logging.getLogger("shim.access")
log = logging.getLogger("shim.proxy")

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
MEASURED_BYTES = 1024 * 1024  # answers up to this size time the backend (admission)


class ClientDisconnected(Exception):
    """The client went away before its request body was read (nothing to answer)."""


@dataclass(slots=True)
class Exchange:
    """What one request did, for the access log and error rendering."""

    method: str
    path: str
    started: float
    request_id: str = ""
    endpoint: str | None = None
    client: Backend | None = None
    backend: Backend | None = None
    status: int = 0
    bytes_out: int = 0
    response_started: bool = False
    translated: bool = False
    fallback: str | None = None
    error: str | None = None


class Proxy:
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
            other = "rust" if backend == "go" else "go"
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
        """One try on `backend`, once admitted (shim/admission.py); the guard hears how Go did.

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

    def _url(self, match: RouteMatch, backend: Backend, scope: Scope) -> URL:
        """Configured base URL + the route's path for that backend + the raw query string.

        Never the client's Host or absolute-form target: the shim cannot be pointed elsewhere.
        """
        path = match.route.faces[backend].render(match.params)
        query = scope.get("query_string") or b""
        text = self.upstream.base_urls[backend] + path
        if query:
            text += "?" + query.decode("latin-1")
        return URL(text, encoded=True)

    async def _stream(self, call: Call, backend: Backend) -> None:
        """Bytes in, bytes out: nothing is parsed or buffered whole (a shadow keeps a copy,
        capped)."""
        ex, body, capture = call.ex, call.body, call.capture
        url = self._url(call.match, backend, call.scope)
        forward = call.request.forward
        if not isinstance(body, bytes | None) and call.request.content_length is not None:
            # The body is passed on unchanged, so the client's length still frames it.
            forward = [*forward, ("Content-Length", str(call.request.content_length))]
        route = call.match.route
        with translate_errors(backend, url):
            response = await self.upstream.send(
                backend,
                route,
                ex.method,
                url,
                headers=forward,
                data=body,
                replayable=functools.partial(self._replayable, call),
            )
        try:
            if response.status in route.fallback_on and self._may_fall_back(call):
                raise FallbackStatus(response.status)
            response_headers = header_policy.backend_response(response.raw_headers, rewrite=False)
            response_headers += header_policy.shim_headers(
                ex.request_id, ex.endpoint, backend, ex.fallback
            )
            ex.status = response.status
            ex.response_started = True
            if capture is not None:
                capture.primary_status = response.status
                capture.primary_encoding = response.headers.get("Content-Encoding", "identity")
            content = response.content
            whole = None
            if content.is_eof():  # a small answer is usually whole by now: one message
                with translate_errors(backend, url):
                    whole = content.read_nowait()
            await call.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers,
                }
            )
            if whole is not None:
                ex.bytes_out = len(whole)
                if capture is not None:
                    capture.keep_answer(whole)
                await call.send({"type": "http.response.body", "body": whole})
                return
            with translate_errors(backend, url):
                async for chunk in content.iter_any():
                    ex.bytes_out += len(chunk)
                    if capture is not None:
                        capture.keep_answer(chunk)
                    await call.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
            await call.send({"type": "http.response.body", "body": b""})
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()  # a half-read connection never goes back to the pool

    async def _translate(self, call: Call, backend: Backend) -> None:
        """Parse once, translate, send, translate the answer back, answer in one message."""
        ex, match, capture = call.ex, call.match, call.capture
        route, client = match.route, match.client
        assert route.adapter is not None
        ex.translated = True
        metrics.count(metrics.TRANSLATIONS, route.name, f"{client}->{backend}")
        raw = call.body if isinstance(call.body, bytes) else b""
        document = parse_json(raw, side="client")
        try:
            translated = route.adapter.translate_request(
                document, client=client, backend=backend, options=route.options
            )
        except AdapterError as exc:
            raise BadRequest(_adapter_message("request", exc), code="bad_shape") from None
        payload = orjson.dumps(translated, option=JSON_OPTIONS)
        url = self._url(match, backend, call.scope)
        forward = header_policy.for_rewrite(call.request.forward)
        with translate_errors(backend, url):
            response = await self.upstream.send(
                backend,
                route,
                ex.method,
                url,
                headers=forward,
                data=payload,
                replayable=functools.partial(self._replayable, call),
            )
            try:
                answer = await read_backend_body(response, limit=self.max_backend_json_bytes)
            finally:
                response.release()  # read whole, or failed: aiohttp closes a broken one
            raw_headers = response.raw_headers
            status = response.status
        if status in route.fallback_on and self._may_fall_back(call):
            raise FallbackStatus(status)
        if capture is not None:
            capture.keep_answer(answer)
            capture.primary_status = status
        extra = header_policy.shim_headers(ex.request_id, ex.endpoint, backend, ex.fallback)
        if not 200 <= status < 300:
            # The backend's own error, in its own words: passed on, not translated.
            response_headers = header_policy.backend_response(raw_headers, rewrite=True)
            response_headers += [(b"content-length", str(len(answer)).encode()), *extra]
            content_type = _raw_header(raw_headers, b"content-type")
            if content_type:
                response_headers.append((b"content-type", content_type))
            await self._send_whole(call.send, ex, status, response_headers, answer)
            return
        codec = answer_codec(route.adapter)
        try:
            if codec is not None:  # parses and writes the answer itself (embed: simdjson)
                body, lossy = codec(
                    route.adapter,
                    answer,
                    client=client,
                    backend=backend,
                    options=route.options,
                    slow=functools.partial(parse_json, side=backend),
                )
            else:
                result = route.adapter.translate_response(
                    parse_json(answer, side=backend),
                    client=client,
                    backend=backend,
                    options=route.options,
                )
                body, lossy = orjson.dumps(result.body, option=JSON_OPTIONS), result.lossy
        except AdapterError as exc:
            raise BadBackendAnswer(
                f"the {backend} backend's answer {_adapter_message('response', exc)}"
            ) from None
        response_headers = header_policy.backend_response(raw_headers, rewrite=True)
        response_headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        if lossy:
            response_headers.append((b"x-shim-lossy", lossy.encode()))
        await self._send_whole(call.send, ex, status, response_headers, body)

    @staticmethod
    async def _send_whole(
        send: Send, ex: Exchange, status: int, headers: header_policy.RawHeaders, body: bytes
    ) -> None:
        ex.status, ex.bytes_out, ex.response_started = status, len(body), True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


Body = bytes | AsyncIterator[bytes] | None


class CancelOnDisconnect:
    """Cancel the running request the moment its client disconnects, so an aborted request
    releases its upstream connection instead of reading on for nobody; the cancellation
    comes out as ClientDisconnected.

    Under `shim serve` the connection itself cancels us (a `DisconnectSignal` in the
    scope's extensions); elsewhere (tests, other servers) a watcher task waits for
    `http.disconnect`. A plain context manager: no coroutine layer on the hot path.
    """

    __slots__ = ("receive", "signal", "task", "watcher")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.signal: DisconnectSignal | None = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        if self.signal is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())
        elif self.signal.lost:
            raise ClientDisconnected
        else:
            self.signal.tasks.add(task)

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.task.cancel()

    def __exit__(self, kind: type[BaseException] | None, exc: object, _: object) -> None:
        if self.watcher is not None:
            disconnected = self.watcher.done() and not self.watcher.cancelled()
            self.watcher.cancel()
        else:
            assert self.signal is not None
            self.signal.tasks.discard(self.task)
            disconnected = self.signal.lost
        if kind is asyncio.CancelledError and disconnected and self.task.uncancel() == 0:
            raise ClientDisconnected from None


@dataclass(slots=True)
class Call:
    """One client request on its way through the proxy, across one or two attempts."""

    scope: Scope
    send: Send
    ex: Exchange
    match: RouteMatch
    request: header_policy.ClientRequest
    body: Body
    capture: Capture | None


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


async def request_body(
    receive: Receive, method: str, *, limit: int | None, declared: int | None
) -> Body:
    """The client's body: bytes when it came in one message, else a stream of chunks.

    With a `limit` (JSON routes), a body declared larger is refused before anything is
    sent on, and a streamed one once it passes the limit (`CappedStream`).
    """
    if limit is not None and declared is not None and declared > limit:
        raise _too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    first = message.get("body", b"")
    if not message.get("more_body", False):
        if limit is not None and len(first) > limit:
            raise _too_large(limit)
        return None if not first and method in BODYLESS_METHODS else first
    if limit is not None:
        return CappedStream(first, receive, limit)
    return _stream_rest(first, receive)


async def _stream_rest(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class CappedStream:
    """A streamed request body that stops at `limit` bytes.

    Past it, the stream raises inside aiohttp's body writer, which aborts the upstream
    exchange (the connection is closed, never reused); aiohttp reports that as a failed
    send, so the proxy looks at `refused` and answers the client 413 instead of a 502.
    """

    __slots__ = ("first", "limit", "receive", "refused")

    def __init__(self, first: bytes, receive: Receive, limit: int) -> None:
        self.first, self.receive, self.limit = first, receive, limit
        self.refused: PayloadTooLarge | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in _stream_rest(self.first, self.receive):
            size += len(chunk)
            if size > self.limit:
                self.refused = _too_large(self.limit)
                raise self.refused
            yield chunk


async def read_body(receive: Receive, *, limit: int, declared: int | None) -> bytes:
    """The whole request body, refusing (413) as soon as it is known to exceed `limit`."""
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"JSON body is over {limit} bytes; send smaller batches or raise SHIM_MAX_JSON_BYTES"
    )


async def read_backend_body(response: aiohttp.ClientResponse, *, limit: int) -> bytes:
    """A backend's whole answer (capped), decoded if it came compressed anyway."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BadBackendAnswer(f"the backend's answer is over {limit} bytes")
        chunks.append(chunk)
    try:
        return decode_body(b"".join(chunks), response.headers.get("Content-Encoding"))
    except ValueError as exc:
        raise BadBackendAnswer(f"the backend's answer cannot be read: {exc}") from None


def parse_json(raw: bytes, *, side: str) -> Any:
    """Parse with orjson (rejects NaN/Infinity, bad UTF-8, lone surrogates, deep nesting).

    A client's bad JSON is a 400; a backend's is a 502.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if side == "client":
            raise BadRequest(f"request body is not valid JSON: {exc}", code="bad_json") from None
        raise BadBackendAnswer(f"the {side} backend's answer is not valid JSON: {exc}") from None
    if side == "client" and (huge := huge_integer(raw)):
        raise BadRequest(
            f"request body has an integer beyond 64 bits ({huge[:24]}…): it cannot be passed "
            "on exactly; send it as a string",
            code="bad_json",
        )
    return document


_STRING_OR_LONG_NUMBER = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])')


def huge_integer(raw: bytes) -> str | None:
    """An integer literal orjson would silently turn into a float (beyond 64 bits), if any.

    Only client bodies are checked (they are small); strings are skipped whole.
    """
    for found in _STRING_OR_LONG_NUMBER.finditer(raw):
        token = found.group()
        if token[:1] != b'"' and not -(2**63) <= int(token) < 2**64:
            return token.decode()
    return None


LOOPBACK = frozenset({"127.0.0.1", "::1"})


def caller_of(request: header_policy.ClientRequest, client_host: str | None) -> str:
    """Who is asking, for the sticky canary: the X-Shim-Key header, else the client address
    (behind a proxy on this host, such as Bun, the one it names in X-Forwarded-For)."""
    if request.caller_key:
        return request.caller_key
    if client_host in LOOPBACK and request.forwarded_client:
        return request.forwarded_client
    return client_host or ""


def _adapter_message(what: str, exc: AdapterError) -> str:
    where = f" (at {exc.field})" if exc.field and exc.field not in exc.message else ""
    return f"{what} has the wrong shape: {exc.message}{where}"


def _header(scope: Scope, name: bytes) -> str | None:
    value = _raw_header(scope["headers"], name)
    return value.decode("latin-1") if value is not None else None


def _raw_header(headers: header_policy.RawHeaders, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


async def send_error(send: Send, exc: ShimError, ex: Exchange) -> None:
    """Answer with the shim's JSON error shape."""
    ex.request_id = ex.request_id or header_policy.new_request_id()
    response = render(
        exc,
        headers=header_policy.shim_headers(ex.request_id, ex.endpoint, ex.backend, ex.fallback),
    )
    ex.status, ex.bytes_out = response.status, len(response.body)
    await response.send(send)


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
