"""The edge guard: refuse, before routing, requests no honest client sends.

Outermost pure-ASGI middleware on both listeners. Refused with a JSON 400 and
`Connection: close`: dot-segments (`/../`, `%2e%2e`) and encoded slashes, backslashes or NUL
in the path; a missing (HTTP/1.1) or repeated `Host`; `Content-Length` together with
`Transfer-Encoding`, or two `Content-Length`s (a parser that let them through is being
smuggled past).
"""

from __future__ import annotations

from shim.errors import BadRequest, render
from shim.types import ASGIApp, Receive, Scope, Send

_FORBIDDEN_IN_PATH = (b"%2f", b"%5c", b"%00", b"\\", b"\x00")


def path_problem(raw_path: bytes) -> str | None:
    """Why a raw request path is refused, or None."""
    if (  # the common case, decided without copying the path
        raw_path[:1] == b"/"
        and b"%" not in raw_path
        and b"\\" not in raw_path
        and b"\x00" not in raw_path
        and b"/." not in raw_path
    ):
        return None
    lowered = raw_path.lower()
    for token in _FORBIDDEN_IN_PATH:
        if token in lowered:
            return "encoded slashes, backslashes and NUL are not allowed in paths"
    segments = lowered.replace(b"%2e", b".").split(b"/")
    if b"." in segments or b".." in segments:
        return "dot-segments (/./, /../, %2e) are not allowed in paths"
    return None


def header_problem(scope: Scope) -> str | None:
    """Why a request's framing headers are refused, or None."""
    hosts = lengths = encodings = 0
    for name, _ in scope["headers"]:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths += 1
        elif name == b"transfer-encoding":
            encodings += 1
    if hosts > 1 or (hosts == 0 and scope.get("http_version") != "1.0"):
        return "exactly one Host header is required"
    if lengths > 1 or (lengths and encodings):
        return "send either one Content-Length or Transfer-Encoding, not both"
    return None


class EdgeGuard:
    """Wraps an ASGI app; refuses hostile requests before they reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = path_problem(scope.get("raw_path") or scope["path"].encode()) or (
                header_problem(scope)
            )
            if problem is not None:
                await refuse(send, problem)
                return
        await self.app(scope, receive, send)


async def refuse(send: Send, message: str) -> None:
    """A JSON 400 that closes the connection: what follows such a request is not trusted."""
    await render(BadRequest(message), close=True).send(send)
