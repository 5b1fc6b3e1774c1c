"""uvicorn's httptools protocol with the deadlines and limits uvicorn leaves out.

uvicorn has no deadline for reading a request: a client that connects and sends nothing,
or trickles its headers or body a byte at a time, holds a connection for ever (its
keep-alive timer only covers idle time between requests). This protocol gives each request
`header_timeout` seconds to finish its headers (from the connection's first byte, or from
the end of the previous response) and `body_timeout` to finish its body, caps the header
section at `max_header_bytes`, and answers the parser's own refusals (smuggling attempts
such as Content-Length with Transfer-Encoding) in the shim's JSON error shape.

uvicorn's own `limit_concurrency` counts every open connection: a burst of more connections
than the limit was answered plain-text 503s, every one, before a single request was read. Here
the limit counts requests under way (`max_requests`), and the ones past it are answered by the
shim's JSON 503 `overloaded` with `Retry-After`, while the requests already admitted go on.

Deadlines are a time stamp per connection, checked by one sweep per worker every
`SWEEP_SECONDS`, not a timer per request phase (arming and cancelling three timers a request
cost more than the sweep). And each connection tells the application when it is lost
(`DisconnectSignal` in the scope's extensions), so an in-flight upstream exchange is cancelled
without a watcher task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shim import metrics
from shim.errors import (
    BadRequest,
    HeadersTooLarge,
    Overloaded,
    RequestTimeout,
    ShimError,
    render,
)
from shim.settings import Settings, load_settings
from shim.types import DISCONNECT_EXTENSION, DisconnectSignal, Receive, Scope, Send

SWEEP_SECONDS = 0.25
_SWEEPING: set[asyncio.AbstractEventLoop] = set()  # loops with a deadline sweep


class ShimHttpProtocol(HttpToolsProtocol):
    """One client connection; limits are class attributes set by `configure` per worker."""

    header_timeout = 10.0
    body_timeout = 60.0
    max_header_bytes = 64 * 1024
    max_requests = 8192
    _configured = False

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.header_timeout = settings.header_timeout
        cls.body_timeout = settings.body_timeout
        cls.max_header_bytes = settings.max_header_bytes
        cls.max_requests = settings.limit_concurrency
        cls._configured = True

    # uvicorn's own override narrows BaseTransport to Transport (and ignores it the same way).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not ShimHttpProtocol._configured:  # a spawned worker: settings from its environment
            ShimHttpProtocol.configure(load_settings())
        self._deadline = 0.0  # loop time; 0 = none
        self._on_deadline: Callable[[], None] = self._headers_too_slow
        self._header_bytes = 0
        self._disconnect = DisconnectSignal()
        super().connection_made(transport)
        if self.loop not in _SWEEPING:
            _SWEEPING.add(self.loop)
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, self.connections)
        self._arm(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disconnect.fire()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self.header_timeout + self.timeout_keep_alive, self._headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # uvicorn types extension values as dicts (the ASGI spec's own extensions are); ours
        # is an object the proxy reads back under its own key (shim.types).
        self.scope["extensions"] = {DISCONNECT_EXTENSION: self._disconnect}  # type: ignore[dict-item]
        self._header_bytes = 0
        self._arm(self.header_timeout, self._headers_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if len(self.tasks) >= self.max_requests:
            app, self.app = self.app, _worker_busy  # this one request: uvicorn runs what is here
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if not self.transport.is_closing() and self.parser.should_keep_alive() is not None:
            self._arm(self.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(
            BadRequest(
                "the request is not valid HTTP/1.1 (e.g. Content-Length together with "
                "Transfer-Encoding, or a malformed header); send one framing only"
            )
        )

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(
                HeadersTooLarge(f"the request's headers are over {self.max_header_bytes} bytes")
            )

    def _headers_too_slow(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is under way: not a slow request
        self._refuse(
            RequestTimeout(f"the request's headers did not arrive within {self.header_timeout:g} s")
        )

    def _body_too_slow(self) -> None:
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        # The application already holds this request; closing tells it the client is gone.
        self.logger.warning(
            "closing a connection whose request body took over %ss", self.body_timeout
        )
        self.transport.close()

    def _refuse(self, error: ShimError) -> None:
        """Answer on the raw transport (no ASGI cycle exists yet) and close."""
        self._disarm()
        response = render(error, close=True)
        head = b"HTTP/1.1 %d %s\r\n" % (
            response.status,
            HTTPStatus(response.status).phrase.encode(),
        )
        head += b"".join(name + b": " + value + b"\r\n" for name, value in response.headers)
        self.transport.write(head + b"\r\n" + response.body)
        self.transport.close()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._deadline = self.loop.time() + seconds
        self._on_deadline = callback

    def _disarm(self) -> None:
        self._deadline = 0.0

    def _check_deadline(self, now: float) -> None:
        if self._deadline and now >= self._deadline:
            self._deadline = 0.0
            self._on_deadline()


async def _worker_busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past `max_requests`: the shim's JSON 503, ready to be retried."""
    metrics.count(metrics.ADMISSION_SHED, "none", "worker_busy")
    await _WORKER_BUSY.send(send)


_WORKER_BUSY = render(
    Overloaded(
        "this worker is handling as many requests as it takes at once "
        "(SHIM_LIMIT_CONCURRENCY); retry shortly"
    )
)


def _sweep(loop: asyncio.AbstractEventLoop, connections: Iterable[object]) -> None:
    """Fire the deadlines that have passed, for every connection of this worker."""
    now = loop.time()
    for connection in list(connections):
        if isinstance(connection, ShimHttpProtocol):
            try:
                connection._check_deadline(now)
            except Exception:  # one broken connection must not stop the sweep
                connection.logger.exception("deadline check failed")
    loop.call_later(SWEEP_SECONDS, _sweep, loop, connections)
