"""Reading bodies with a cap: the client's request (whole, or streamed through) and a
backend's whole answer.

The proxy refuses an oversized JSON body with a 413 before it is sent on, and never holds
more of a backend's answer than its limit; a shadow reads the other backend's answer with
the same reader (`read_capped`), so there is one capped reader of a backend's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import aiohttp

from shim.errors import BadBackendAnswer, PayloadTooLarge, ShimError
from shim.serving.disconnect import ClientDisconnected
from shim.serving.upstream import decode_body
from shim.types import Receive

BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

# A streamed body is any async iterable of chunks (aiohttp sends one as it comes).
Body = bytes | AsyncIterable[bytes] | None


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


async def read_capped(
    response: aiohttp.ClientResponse, *, limit: int, refuse: type[ShimError], what: str
) -> bytes:
    """A backend's whole answer as it came (not decoded); past `limit` bytes, `refuse` is
    raised saying that `what` is over the limit (the proxy: a 502; a shadow: its own)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise refuse(f"{what} is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_backend_body(response: aiohttp.ClientResponse, *, limit: int) -> bytes:
    """A backend's whole answer (capped), decoded if it came compressed anyway."""
    raw = await read_capped(
        response, limit=limit, refuse=BadBackendAnswer, what="the backend's answer"
    )
    try:
        return decode_body(raw, response.headers.get("Content-Encoding"))
    except ValueError as exc:
        raise BadBackendAnswer(f"the backend's answer cannot be read: {exc}") from None
