"""Header policy, in one place: what crosses the shim in each direction.

Hop-by-hop headers (RFC 9110 §7.6.1) and every header named in `Connection` are dropped
both ways. `Host`, `Content-Length` and `Expect` are never copied to a backend: the
upstream client frames the body it actually sends. Repeated headers stay repeated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# A rewritten body is ours: the client's encoding and type negotiation do not apply to it.
NEGOTIATION = frozenset({"accept-encoding", "content-type"})
# uvicorn writes its own Date; framing of a rewritten body is fresh.
NOT_RETURNED = HOP_BY_HOP | {b"date"}
NOT_RETURNED_ON_REWRITE = NOT_RETURNED | {b"content-length", b"content-encoding", b"content-type"}
VIA = "1.1 cutover-shim"

RawHeaders = list[tuple[bytes, bytes]]  # what the shim builds and sends
# What it reads: uvicorn's scope gives a list, aiohttp's raw_headers a tuple.
HeaderPairs = Sequence[tuple[bytes, bytes]]


@dataclass(slots=True)
class ClientRequest:
    """What the proxy needs from a client's headers, read in one pass."""

    forward: list[tuple[str, str]]
    request_id: str
    content_length: int | None
    caller_key: str | None = None
    forwarded_client: str | None = None  # the right-most X-Forwarded-For entry, as received


def connection_tokens(headers: HeaderPairs) -> frozenset[bytes]:
    """Header names listed in `Connection` (they are hop-by-hop for this message only)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def client_request(
    headers: HeaderPairs, *, client_host: str | None, scheme: str, caller_header: bytes
) -> ClientRequest:
    """Headers to send upstream, plus the request id, declared length and canary caller key.

    Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `Via` and `X-Request-ID` (the
    client's, or a new one).
    """
    dropped = NOT_FORWARDED
    named = connection_tokens(headers)
    caller_key: str | None = None
    forward: list[tuple[str, str]] = []
    request_id = forwarded_for = forwarded_proto = via = None
    content_length: int | None = None
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"content-length":
            content_length = int(raw_value) if raw_value.isdigit() else None
        if name in dropped or name in named:
            continue
        value = raw_value.decode("latin-1")
        if name == caller_header:
            caller_key = value
        if name == b"x-request-id":
            request_id = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"x-forwarded-proto":
            forwarded_proto = value
        elif name == b"via":
            via = value
        else:
            forward.append((raw_name.decode("latin-1"), value))
    request_id = request_id or new_request_id()
    forwarded_client = forwarded_for.rpartition(",")[2].strip() or None if forwarded_for else None
    if client_host:
        forwarded_for = f"{forwarded_for}, {client_host}" if forwarded_for else client_host
    if forwarded_for:
        forward.append(("X-Forwarded-For", forwarded_for))
    forward.append(("X-Forwarded-Proto", forwarded_proto or scheme))
    forward.append(("Via", f"{via}, {VIA}" if via else VIA))
    forward.append(("X-Request-ID", request_id))
    return ClientRequest(forward, request_id, content_length, caller_key, forwarded_client)


def new_request_id() -> str:
    """32 random hex digits, like a uuid4's hex (and five times cheaper to make)."""
    return os.urandom(16).hex()


def for_rewrite(forward: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for a body the shim wrote itself: JSON, not negotiated by the client."""
    kept = [(name, value) for name, value in forward if name.lower() not in NEGOTIATION]
    kept.append(("Content-Type", "application/json"))
    return kept


def backend_response(headers: HeaderPairs, *, rewrite: bool) -> RawHeaders:
    """A backend's response headers as the client may see them (repeats kept)."""
    dropped = NOT_RETURNED_ON_REWRITE if rewrite else NOT_RETURNED
    named = connection_tokens(headers)
    return [(n, v) for n, v in headers if (low := n.lower()) not in dropped and low not in named]


def shim_headers(
    request_id: str, endpoint: str | None, backend: str | None, fallback: str | None = None
) -> RawHeaders:
    """The headers the shim puts on every answer it gives."""
    headers = [(b"x-request-id", request_id.encode("latin-1"))]
    if endpoint:
        headers.append((b"x-shim-endpoint", endpoint.encode()))
    if backend:
        headers.append((b"x-shim-backend", backend.encode()))
    if fallback:
        headers.append((b"x-shim-fallback", fallback.encode()))
    return headers
