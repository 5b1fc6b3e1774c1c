"""One error shape everywhere: every layer that answers an error (the HTTP protocol, the edge
guard, the proxy, the admin app) answers it through `shim.errors.render`."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable

import pytest

from shim.errors import MethodNotAllowed, Overloaded, ShimError, Unauthorized, render
from tests.servers import ROOT, Shim
from tests.test_hardening import raw, responses

TOKEN = "test-token-0123456789"


def assert_error_shape(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got_status, headers, body = answer
    assert got_status == status, (got_status, body)
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    document = json.loads(body)
    assert list(document) == ["error"] and sorted(document["error"]) == ["code", "message"]
    assert document["error"]["code"] == code
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]


def get(port: int, target: str, method: str = "GET", extra: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n%s\r\n" % (
        method.encode(),
        target.encode(),
        extra,
    )


def test_every_layer_answers_errors_in_one_shape(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(rust_url=echo_backend, go_url=echo_backend, SHIM_ADMIN_TOKEN=TOKEN)
    smuggled = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
    cases = [
        # the HTTP protocol, before any ASGI app sees the request
        (
            shim.port,
            get(shim.port, "/ai/embed", "POST", smuggled) + b"0\r\n\r\n",
            400,
            "bad_request",
        ),
        (shim.port, get(shim.port, "/storage/k", extra=big), 431, "headers_too_large"),
        # the edge guard
        (shim.port, get(shim.port, "/storage/../ai/embed"), 400, "bad_request"),
        (shim.admin_port, get(shim.admin_port, "/_shim/%2e%2e/flags"), 400, "bad_request"),
        # the proxy
        (shim.port, get(shim.port, "/nowhere"), 404, "not_found"),
        (shim.port, get(shim.port, "/_shim/flags"), 404, "not_found"),
        (shim.port, get(shim.port, "/ai/embed"), 405, "method_not_allowed"),
        # the admin app
        (shim.admin_port, get(shim.admin_port, "/nowhere"), 404, "not_found"),
        (
            shim.admin_port,
            get(shim.admin_port, "/_shim/flags", "DELETE"),
            405,
            "method_not_allowed",
        ),
        (shim.admin_port, get(shim.admin_port, "/_shim/rollback", "POST"), 401, "unauthorized"),
    ]
    for port, request, status, code in cases:
        [answer] = responses(raw(port, request))
        assert_error_shape(answer, status, code)
    [(_, headers, body)] = responses(raw(shim.port, get(shim.port, "/ai/embed")))
    assert headers["allow"] == "POST" and "allowed: POST" in json.loads(body)["error"]["message"]
    [(_, headers, _)] = responses(
        raw(shim.admin_port, get(shim.admin_port, "/_shim/rollback", "POST"))
    )
    assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("error", "header"),
    [
        (MethodNotAllowed("no", allowed=frozenset({"GET", "POST"})), (b"allow", b"GET, POST")),
        (Overloaded("busy"), (b"retry-after", b"1")),
        (Unauthorized("who?"), (b"www-authenticate", b"Bearer")),
    ],
)
def test_render_adds_each_errors_own_headers(error: ShimError, header: tuple[bytes, bytes]) -> None:
    response = render(error, headers=[(b"x-request-id", b"r1")], close=True)
    assert response.status == error.status_code
    assert response.headers[:2] == [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(response.body)).encode()),
    ]
    assert header in response.headers and (b"x-request-id", b"r1") in response.headers
    assert response.headers[-1] == (b"connection", b"close")
    assert json.loads(response.body) == error.to_dict()


def test_the_error_shape_is_built_only_by_render() -> None:
    """No module but shim/errors.py writes an {"error": {...}} literal or serialises a
    ShimError itself: the shapes cannot drift apart again."""
    offenders = []
    for path in sorted((ROOT / "shim").rglob("*.py")):
        if path.name == "errors.py" or "reference" in path.parts:  # reference: a backend's own
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and any(
                isinstance(key, ast.Constant)
                and key.value == "error"
                and isinstance(value, ast.Dict)
                for key, value in zip(node.keys, node.values, strict=True)
            ):
                offenders.append(f"{path.name}:{node.lineno} builds an error dict")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "to_dict"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"exc", "error", "err"}
            ):
                offenders.append(f"{path.name}:{node.lineno} serialises an error by hand")
    assert offenders == []
