"""Who is asking: the one identity the sticky canary and the admission queues share."""

from __future__ import annotations

from shim.headers import ClientRequest

LOOPBACK = frozenset({"127.0.0.1", "::1"})


def caller_of(request: ClientRequest, client_host: str | None) -> str:
    """Who is asking, for the sticky canary: the X-Shim-Key header, else the client address
    (behind a proxy on this host, such as Bun, the one it names in X-Forwarded-For)."""
    if request.caller_key:
        return request.caller_key
    if client_host in LOOPBACK and request.forwarded_client:
        return request.forwarded_client
    return client_host or ""
