"""One pooled HTTP client per backend, and the one place aiohttp's errors become ShimErrors.

aiohttp, not httpx: a raw ASGI pass-through costs less than half the CPU per request with
aiohttp than with httpx over an aiohttp transport, and a tenth of plain httpx's
(`benchmarks/client_choice.py`; the figures are in the README's design notes and its stored
runs in benchmarks/results/). Sessions are opened and closed by the app's lifespan.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import AsyncIterable, Callable
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict, istr
from yarl import URL

from shim import metrics
from shim.errors import BackendError, BackendTimeout, BackendUnreachable, BadBackendAnswer
from shim.routes import Route
from shim.settings import Settings
from shim.types import BACKENDS, Backend

_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


class PassThroughRequest(aiohttp.ClientRequest):
    """A request that carries the headers it is given and no others: no User-Agent, Accept
    or Accept-Encoding of aiohttp's (a backend would then compress for a client that never
    asked), no Content-Type guessed from the payload.

    aiohttp's own way (`skip_auto_headers`) sorts and rebuilds the skip list on every
    request (~2.7 us, 2.4% of a pass-through); this decides once.
    tests/test_embed_cutover.py holds the backend to seeing only the client's headers.
    """

    DEFAULT_HEADERS: dict[istr, str] = {}  # noqa: RUF012 - replaces aiohttp's class attribute
    _NEVER_ADDED = CIMultiDict({"User-Agent": None, "Content-Type": None})

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = self._NEVER_ADDED


class ErrorClosingProtocol(ResponseHandler):
    """A backend connection that is never reused after a 5xx answer.

    A backend in trouble is the one most likely to drop the connection just after it has
    answered: uvicorn, for one, sends the app's 500 with keep-alive and then closes the
    socket. Back in the pool, that connection would fail the *next* request — another
    client's, maybe a chat that may not be retried. aiohttp hands each parsed answer to
    `feed_data` before anyone reads it, and decides reuse from `should_close` when the
    body ends: the one place to mark it.
    """

    def feed_data(self, data: Any, size: int = 0) -> None:
        if data[0].code >= 500:
            self.force_close()
        super().feed_data(data, size)


class BackendConnector(aiohttp.TCPConnector):
    """aiohttp's pool with connections that are dropped after a 5xx answer."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # aiohttp builds every connection's protocol from this factory; no public option.
        protocol: type[ResponseHandler] = ErrorClosingProtocol
        self._factory = functools.partial(protocol, loop=self._loop)


STALE_CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
"""What a pooled connection that the backend had already closed fails with, before any byte
of the answer arrives. A connect error is not one of them (`ClientConnectorError` is a
subclass of ClientOSError and is checked first)."""


class Upstream:
    """The backends' connection pools for one worker.

    Per backend: the pool every request uses, and a second session whose connections are
    never reused, for the one retry after a pooled connection turned out to be dead.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_urls: dict[Backend, str] = {b: settings.backend_url(b) for b in BACKENDS}
        self._sessions: dict[Backend, aiohttp.ClientSession] = {}
        self._fresh: dict[Backend, aiohttp.ClientSession] = {}
        self._timeouts: dict[tuple[float, float, float | None], aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        limit = self.settings.max_connections_per_backend
        for backend in BACKENDS:
            # Idle connections are closed before the backend's own keep-alive timer can
            # close them under a request we are just sending (upstream_idle_seconds).
            pooled = BackendConnector(
                limit=limit, keepalive_timeout=self.settings.upstream_idle_seconds
            )
            self._sessions[backend] = _session(pooled)
            self._fresh[backend] = _session(BackendConnector(limit=limit, force_close=True))

    async def close(self) -> None:
        sessions = [*self._sessions.values(), *self._fresh.values()]
        self._sessions, self._fresh = {}, {}
        for session in sessions:
            await session.close()

    def request(
        self,
        backend: Backend,
        route: Route,
        method: str,
        url: URL,
        *,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterable[bytes] | None,
    ) -> aiohttp.client._RequestContextManager:
        """Send one request on `backend`'s pool: no redirects followed, the route's timeouts.

        Await it for the response (headers read), or use it as an async context manager.
        """
        return self._sessions[backend].request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=self.timeout(route),
        )

    async def send(
        self,
        backend: Backend,
        route: Route,
        method: str,
        url: URL,
        *,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterable[bytes] | None,
        replayable: Callable[[], bool],
    ) -> aiohttp.ClientResponse:
        """`request`, awaited for the answer's headers; when `replayable()` (the request may
        be repeated and its body is at hand: asked only after a failure), a pooled
        connection that fails before any byte of the answer arrives is retried once on a
        new connection.

        The caller releases or closes the response. aiohttp itself retries only GET, HEAD,
        OPTIONS, TRACE, PUT and DELETE this way; our idempotent routes are mostly POSTs.
        """
        try:
            return await self.request(backend, route, method, url, headers=headers, data=data)
        except aiohttp.ClientConnectorError:
            raise  # nothing was sent: a connect error is the backend's, not a stale pool's
        except STALE_CONNECTION_ERRORS:
            if not replayable():
                raise
        metrics.count(metrics.UPSTREAM_RETRIES, backend)
        return await self._fresh[backend].request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=self.timeout(route),
        )

    async def check_health(self, backend: Backend, path: str) -> dict[str, object]:
        """Is the backend answering HTTP at all? Any status counts as reachable."""
        url = self.base_urls[backend] + path
        started = time.perf_counter()
        try:
            with translate_errors(backend, url):
                async with self._sessions[backend].get(url, timeout=_HEALTH_TIMEOUT) as response:
                    await response.read()
        except BackendError as exc:
            return {"reachable": False, "url": url, "error": exc.message}
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return {"reachable": True, "url": url, "status": response.status, "ms": elapsed_ms}

    def timeout(self, route: Route) -> aiohttp.ClientTimeout:
        """The route's connect, between-bytes read and total timeouts (cached)."""
        key = (
            route.connect_timeout or self.settings.connect_timeout,
            route.read_timeout or self.settings.read_timeout,
            route.total_timeout or self.settings.total_timeout,
        )
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=key[2], sock_connect=key[0], sock_read=key[1])
            self._timeouts[key] = timeout
        return timeout


def _session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # pass-through keeps the backend's bytes and encoding
        trust_env=False,  # the environment's proxy settings never apply
        cookie_jar=aiohttp.DummyCookieJar(),  # never share one client's cookies
        request_class=PassThroughRequest,
        raise_for_status=False,
    )


class translate_errors:  # used like a function: `with translate_errors(backend, url):`
    """Turn aiohttp and timeout errors into the shim's BackendError tree, once, here.

    A plain class, not a generator-based context manager: it wraps every upstream exchange,
    and the URL is only turned into text when there is an error to describe.
    """

    __slots__ = ("backend", "url")

    def __init__(self, backend: Backend, url: object) -> None:
        self.backend = backend
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        if exc is not None and isinstance(exc, TimeoutError | aiohttp.ClientError):
            raise _backend_error(self.backend, str(self.url), exc) from exc


def _backend_error(backend: Backend, url: str, exc: BaseException) -> BackendError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return BackendTimeout(
            f"the {backend} backend did not answer in time ({url}); check its health, or "
            "raise the route's read_timeout if the work is legitimately slow"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BackendUnreachable(
            f"cannot connect to the {backend} backend at {url}: {exc.os_error.strerror or exc}; "
            f"is it running? (SHIM_{backend.upper()}_URL)"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return BackendUnreachable(f"the {backend} backend dropped the connection ({url}): {exc}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return BadBackendAnswer(f"the {backend} backend sent a broken body ({url}): {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return BadBackendAnswer(
            f"the {backend} backend sent an invalid HTTP answer ({url}): {exc.message}"
        )
    return BackendError(f"request to the {backend} backend failed ({url}): {exc}")


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo a backend's gzip or deflate content coding; ValueError when it cannot."""
    name = (encoding or "identity").lower()
    if name == "identity":
        return body
    if name not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"unsupported content encoding {name!r}")
    try:
        return zlib.decompress(body, wbits=47)  # gzip or zlib framing, detected
    except zlib.error as exc:
        raise ValueError(f"the {name} body does not decode: {exc}") from None
