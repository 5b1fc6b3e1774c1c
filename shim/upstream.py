"""One pooled HTTP client per backend, and the one place aiohttp's errors become ShimErrors.

aiohttp, not httpx: a raw ASGI pass-through costs less than half the CPU per request with
aiohttp than with httpx over an aiohttp transport, and a tenth of plain httpx's
(`benchmarks/client_choice.py`; the figures are in the README's design notes and its stored
runs in benchmarks/results/). Sessions are opened and closed by the app's lifespan.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from shim.errors import BackendError, BackendTimeout, BackendUnreachable, BadBackendAnswer
from shim.routes import Route
from shim.settings import Settings
from shim.types import BACKENDS, Backend

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


class PassThroughRequest(aiohttp.ClientRequest):
    """A request that carries the headers it is given and no others: no User-Agent, Accept
    or Accept-Encoding of aiohttp's (a backend would then compress for a client that never
    asked), no Content-Type guessed from the payload.

    aiohttp's own way (`skip_auto_headers`) sorts and rebuilds the skip list on every
    request (~2.7 us, 2.4% of a pass-through); this decides once.
    tests/test_embed_cutover.py holds the backend to seeing only the client's headers.
    """

    DEFAULT_HEADERS: dict[str, str] = {}  # noqa: RUF012 - replaces aiohttp's class attribute
    _NEVER_ADDED = CIMultiDict({"User-Agent": None, "Content-Type": None})

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = self._NEVER_ADDED


class Upstream:
    """The backends' connection pools for one worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_urls: dict[Backend, str] = {b: settings.backend_url(b) for b in BACKENDS}
        self._sessions: dict[Backend, aiohttp.ClientSession] = {}
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        for backend in BACKENDS:
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_connections_per_backend,
                keepalive_timeout=30,
                force_close=False,
            )
            self._sessions[backend] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # pass-through keeps the backend's bytes and encoding
                trust_env=False,  # the environment's proxy settings never apply
                cookie_jar=aiohttp.DummyCookieJar(),  # never share one client's cookies
                request_class=PassThroughRequest,
                raise_for_status=False,
            )

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def request(
        self,
        backend: Backend,
        route: Route,
        method: str,
        url: URL,
        *,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
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

    async def probe(self, backend: Backend, path: str) -> dict[str, object]:
        """Is the backend answering HTTP at all? Any status counts as reachable."""
        url = self.base_urls[backend] + path
        started = time.perf_counter()
        try:
            with translate_errors(backend, url):
                async with self._sessions[backend].get(url, timeout=_PROBE_TIMEOUT) as response:
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
