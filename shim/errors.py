"""The shim's error tree. Every error a client or operator sees is one of these.

    ShimError                      status_code, code, message; rendered as JSON
    ├── ConfigError                bad settings or route table (start-up; names the key)
    ├── ClientError                4xx: the request is at fault
    │   ├── BadRequest             400 bad_request / bad_json / bad_shape
    │   ├── NotFound               404 not_found
    │   ├── MethodNotAllowed       405 method_not_allowed (Allow names the right methods)
    │   ├── RequestTimeout         408 request_timeout (headers too slow; server's own answer)
    │   ├── PayloadTooLarge        413 payload_too_large
    │   ├── HeadersTooLarge        431 headers_too_large
    │   ├── Unauthorized           401 unauthorized (admin write without the right token)
    │   ├── AdminWritesDisabled    403 admin_writes_disabled (no SHIM_ADMIN_TOKEN configured)
    │   └── InvalidValue           422 invalid_value (an admin request body that makes no sense)
    ├── FlagError                  a flag change that is refused
    │   ├── UnknownEndpoint        404 unknown_endpoint
    │   ├── FlagRefused            422 flag_refused (e.g. a Go-only endpoint to rust)
    │   ├── FlagPinned             409 flag_pinned (names the SHIM_PIN__ variable)
    │   ├── Conflict               409 conflict (expected_generation is stale)
    │   └── GateClosed             412 parity_gate (towards Go without a recent PASS)
    ├── FlagStateError             500 flag_state_corrupt (the stored state cannot be used)
    ├── FlagStoreUnavailable       503 flag_store_unavailable (etcd cannot be reached)
    ├── Overloaded                 503 overloaded: shed after waiting (shim/serving/admission.py)
    └── BackendError               502 backend_error: the backend failed or answered badly
        ├── BackendUnreachable     502 backend_unreachable
        ├── BadBackendAnswer       502 bad_backend_answer
        └── BackendTimeout         504 backend_timeout

Errors from aiohttp are translated into BackendError at one place (`upstream.translate_errors`).
Every answer made of a ShimError is built by `render` (status, headers, JSON body), whichever
layer answers: the proxy, the edge guard, the HTTP protocol or the admin app.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from shim.types import Send

Header = tuple[bytes, bytes]


class ShimError(Exception):
    """Base of every error the shim reports."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> list[Header]:
        """Headers this kind of error adds to its answer (e.g. `Allow` on a 405)."""
        return []


class ConfigError(ShimError):
    """Settings or route table are invalid; `key` names the offending setting."""

    code = "config_error"

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ClientError(ShimError):
    """The client's request is at fault (4xx)."""

    status_code = 400
    code = "bad_request"


class BadRequest(ClientError):
    """Bad JSON, a body of the wrong shape, or a path the shim will not forward."""

    def __init__(self, message: str, *, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class NotFound(ClientError):
    """No route serves this path (the shim is never an open proxy)."""

    status_code = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    """The path is routed but not for this method."""

    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: frozenset[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> list[Header]:
        return [(b"allow", ", ".join(sorted(self.allowed)).encode())]


class RequestTimeout(ClientError):
    """The request's headers did not arrive within `header_timeout`."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    """A JSON body on a rewriting route is over SHIM_MAX_JSON_BYTES."""

    status_code = 413
    code = "payload_too_large"


class HeadersTooLarge(ClientError):
    """The request's header section is over `max_header_bytes`."""

    status_code = 431
    code = "headers_too_large"


class Unauthorized(ClientError):
    """An admin write without the configured bearer token."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> list[Header]:
        return [(b"www-authenticate", b"Bearer")]


class AdminWritesDisabled(ClientError):
    """No SHIM_ADMIN_TOKEN is configured, so no admin write is accepted."""

    status_code = 403
    code = "admin_writes_disabled"


class InvalidValue(ClientError):
    """An admin request whose body has an unknown key or a value of the wrong kind."""

    status_code = 422
    code = "invalid_value"


class FlagError(ShimError):
    """A flag change that is refused."""

    status_code = 422
    code = "flag_refused"


class UnknownEndpoint(FlagError):
    """No endpoint of that name in the route table."""

    status_code = 404
    code = "unknown_endpoint"


class FlagRefused(FlagError):
    """The change is invalid for this endpoint (e.g. a Go-only endpoint to rust)."""


class FlagPinned(FlagError):
    """An environment pin (systemd drop-in) fixes this endpoint's backend."""

    status_code = 409
    code = "flag_pinned"

    def __init__(self, message: str, *, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


class Conflict(FlagError):
    """The flag state moved past the generation the change was computed from."""

    status_code = 409
    code = "conflict"

    def __init__(
        self,
        message: str,
        *,
        generation: int,
        expected: int | None = None,
        current: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.generation = generation  # the state's generation now
        self.expected = expected  # the generation the change was computed from, when given
        self.current = current  # the endpoint's flag now, when known
        self.state: dict[str, Any] | None = None  # the whole flags view, filled in by the API

    def to_dict(self) -> dict[str, Any]:
        """The error shape plus the state now: the contract's 409 carries it."""
        document: dict[str, Any] = {**super().to_dict(), "generation": self.generation}
        if self.current is not None:
            document["current"] = self.current
        if self.state is not None:
            document["state"] = self.state
        return document


class GateClosed(FlagError):
    """Moving traffic towards Go without a recent PASS parity verdict (shim/cutover/gate.py)."""

    status_code = 412
    code = "parity_gate"


class FlagStateError(ShimError):
    """The stored flag state exists but cannot be used (corrupt, half-written, wrong format)."""

    code = "flag_state_corrupt"


class FlagStoreUnavailable(ShimError):
    """The shared flag store (etcd) cannot be reached: writes wait until it is back."""

    status_code = 503
    code = "flag_store_unavailable"


class Overloaded(ShimError):
    """No slot to a backend came free within the wait budget (shim/serving/admission.py), its queue
    is full, or the worker is past limit_concurrency: shed, retry shortly."""

    status_code = 503
    code = "overloaded"
    retry_after = 1

    def headers(self) -> list[Header]:
        return [(b"retry-after", str(self.retry_after).encode())]


class BackendError(ShimError):
    """The backend failed or answered something the shim cannot pass on."""

    status_code = 502
    code = "backend_error"


class BackendUnreachable(BackendError):
    """Could not connect to the backend, or it dropped the connection."""

    code = "backend_unreachable"


class BadBackendAnswer(BackendError):
    """The backend's answer is not valid JSON or not of its dialect's shape."""

    code = "bad_backend_answer"


class BackendTimeout(BackendError):
    """The backend did not answer within the route's timeout."""

    status_code = 504
    code = "backend_timeout"


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A ShimError as an HTTP answer: the status, every header, the JSON body."""

    status: int
    headers: list[Header]
    body: bytes

    async def send(self, send: Send) -> None:
        """Answer through an ASGI `send`."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def render(
    error: ShimError, *, headers: Iterable[Header] = (), close: bool = False
) -> ErrorResponse:
    """The one place the shim's error shape is built: `{"error": {"code", "message"}}` as
    `application/json`, the error's own headers (`Allow`, `Retry-After`, `WWW-Authenticate`),
    then `headers` (e.g. the request id), and `Connection: close` when the connection is
    not to be reused (a request no honest client sends)."""
    body = orjson.dumps(error.to_dict())
    answer = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *error.headers(),
        *headers,
    ]
    if close:
        answer.append((b"connection", b"close"))
    return ErrorResponse(error.status_code, answer, body)
