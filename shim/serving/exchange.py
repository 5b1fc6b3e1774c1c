"""One request through the pipeline: what it carries (`Call`) and what it did (`Exchange`).

The record is filled in as the request goes and read once at the end, by the access log,
the metrics and, when something failed before the answer started, `send_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shim import headers as header_policy
from shim.errors import ShimError, render
from shim.routes import RouteMatch
from shim.serving.bodies import Body
from shim.types import Backend, Scope, Send

if TYPE_CHECKING:
    from shim.serving.shadow import Capture


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


async def send_error(send: Send, exc: ShimError, ex: Exchange) -> None:
    """Answer with the shim's JSON error shape."""
    ex.request_id = ex.request_id or header_policy.new_request_id()
    response = render(
        exc,
        headers=header_policy.shim_headers(ex.request_id, ex.endpoint, ex.backend, ex.fallback),
    )
    ex.status, ex.bytes_out = response.status, len(response.body)
    await response.send(send)
