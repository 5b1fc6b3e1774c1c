"""uvicorn's httptools protocol with the deadlines and limits uvicorn leaves out.

uvicorn has no deadline for reading a request: a client that connects and sends nothing,
or trickles its headers or body a byte at a time, holds a connection for ever (its
keep-alive timer only covers idle time between requests). This protocol gives each request
`header_timeout` seconds to finish its headers (from the connection's first byte, or from
the end of the previous response) and `body_timeout` to finish its body, caps the header
section at `max_header_bytes`, and answers the parser's own refusals (smuggling attempts
such as Content-Length with Transfer-Encoding) in the shim's JSON error shape.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shim.settings import Settings, load_settings

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class ShimHttpProtocol(HttpToolsProtocol):
    """One client connection; limits are class attributes set by `configure` per worker."""

    header_timeout = 10.0
    body_timeout = 60.0
    max_header_bytes = 64 * 1024
    _configured = False

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.header_timeout = settings.header_timeout
        cls.body_timeout = settings.body_timeout
        cls.max_header_bytes = settings.max_header_bytes
        cls._configured = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not ShimHttpProtocol._configured:  # a spawned worker: settings from its environment
            ShimHttpProtocol.configure(load_settings())
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self.header_timeout + self.timeout_keep_alive, self._headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
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
        super().on_headers_complete()
        if not self.transport.is_closing() and self.parser.should_keep_alive() is not None:
            self._arm(self.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(
            400,
            "bad_request",
            "the request is not valid HTTP/1.1 (e.g. Content-Length together with "
            "Transfer-Encoding, or a malformed header); send one framing only",
        )

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(
                431,
                "headers_too_large",
                f"the request's headers are over {self.max_header_bytes} bytes",
            )

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is under way: not a slow request
        self._refuse(
            408,
            "request_timeout",
            f"the request's headers did not arrive within {self.header_timeout:g} s",
        )

    def _body_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        # The application already holds this request; closing tells it the client is gone.
        self.logger.warning(
            "closing a connection whose request body took over %ss", self.body_timeout
        )
        self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._disarm()
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        head += b"connection: close\r\n\r\n"
        self.transport.write(head + body)
        self.transport.close()

    def _arm(self, seconds: float, callback: object) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)  # type: ignore[arg-type]

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
