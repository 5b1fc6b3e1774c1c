"""The app in-process (httpx.ASGITransport): errors the shim answers without any backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim.app import ShimApp
from shim.route_config import load_routes
from shim.serving.disconnect import CancelOnDisconnect, ClientDisconnected
from shim.settings import load_settings
from shim.types import DISCONNECT_EXTENSION, DisconnectSignal

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing must ever get there in these tests


def run_against_app(tmp_path: Path, check: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> None:
    settings = load_settings(
        None,
        state_dir=tmp_path,
        rust_url=UNREACHABLE,
        go_url=UNREACHABLE,
        max_json_bytes=2048,
        access_log=False,
    )
    app = ShimApp(settings, load_routes(ROOT / "config" / "routes.toml"))

    async def scenario() -> None:
        async with app.running():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
                await check(client)

    asyncio.run(scenario())


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    return response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/nowhere", None, 404, "not_found"),
        ("POST", "/_go/ai/embed", b"{}", 404, "not_found"),
        ("GET", "/_shim/flags", None, 404, "not_found"),
        ("GET", "/ai/embed", None, 405, "method_not_allowed"),
        ("PATCH", "/v1/storage/key", b"x", 405, "method_not_allowed"),
        ("POST", "/v1/embed", b"{not json", 400, "bad_json"),
        ("POST", "/v1/embed", b'{"texts": [NaN]}', 400, "bad_json"),
        ("POST", "/v1/embed", b'{"texts": "one"}', 400, "bad_shape"),
        ("POST", "/v1/embed", b"\xff\xfe", 400, "bad_json"),
        ("POST", "/v1/embed", b'{"texts": ["' + b"a" * 4096 + b'"]}', 413, "payload_too_large"),
    ],
)
def test_shim_errors_are_json_with_a_code(
    tmp_path: Path, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.request(method, path, content=body)
        assert response.status_code == status
        assert error_code(response) == code
        assert response.json()["error"]["message"]

    run_against_app(tmp_path, check)  # the flag says rust: /v1/embed is a rewriting route


def test_405_names_the_allowed_methods(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/embed")
        assert response.headers["allow"] == "POST"

    run_against_app(tmp_path, check)


def test_healthz_answers_on_the_proxy_port(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/_shim/healthz")
        assert response.status_code == 200 and response.json() == {"status": "ok"}

    run_against_app(tmp_path, check)


async def _disconnect_after(seconds: float) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {"type": "http.disconnect"}


@pytest.mark.parametrize("server_signals", [True, False])
def test_a_disconnect_cancels_the_request_in_flight(server_signals: bool) -> None:
    """With the server's DisconnectSignal (shim serve) or by watching receive() (any other
    server), a client that goes away cancels the upstream work at once."""

    async def scenario() -> float:
        signal = DisconnectSignal()
        scope: dict[str, Any] = {"extensions": {DISCONNECT_EXTENSION: signal}}
        if server_signals:
            asyncio.get_running_loop().call_later(0.05, signal.fire)
        else:
            scope = {}
        started = asyncio.get_running_loop().time()
        watching = CancelOnDisconnect(scope, lambda: _disconnect_after(0.05))
        with pytest.raises(ClientDisconnected), watching:
            await asyncio.sleep(10)  # a backend that takes its time
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 1.0


def test_a_finished_request_is_not_cancelled_by_a_later_disconnect() -> None:
    async def scenario() -> None:
        signal = DisconnectSignal()
        scope = {"extensions": {DISCONNECT_EXTENSION: signal}}
        with CancelOnDisconnect(scope, lambda: _disconnect_after(10)):
            await asyncio.sleep(0.01)
        signal.fire()  # the connection closes after the answer: nothing left to cancel
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
