"""The capped reader of a backend's answer and the backend URL builder: the two pieces the
proxy and the shadow share (one of each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shim.errors import BackendError, BadBackendAnswer
from shim.route_config import load_routes
from shim.serving.backend_url import backend_url
from shim.serving.bodies import read_backend_body, read_capped
from shim.types import Backend

ROOT = Path(__file__).resolve().parent.parent
ANSWER = b"x" * 70_000  # several chunks on loopback


async def _read(limit: int, refuse: type[BackendError], *, decoded: bool = False) -> bytes:
    """Serve ANSWER from a real aiohttp server on loopback and read it with a cap."""

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as response,
        ):
            if decoded:
                return await read_backend_body(response, limit=limit)
            return await read_capped(
                response, limit=limit, refuse=refuse, what="the go shadow answer"
            )
    finally:
        await runner.cleanup()


def test_an_answer_at_the_cap_is_read_whole() -> None:
    assert asyncio.run(_read(len(ANSWER), BackendError)) == ANSWER
    assert asyncio.run(_read(len(ANSWER), BadBackendAnswer, decoded=True)) == ANSWER


def test_an_answer_one_byte_past_the_cap_is_refused_with_the_callers_error() -> None:
    with pytest.raises(BackendError) as shadow:
        asyncio.run(_read(len(ANSWER) - 1, BackendError))
    assert type(shadow.value) is BackendError
    assert shadow.value.message == f"the go shadow answer is over {len(ANSWER) - 1} bytes"
    with pytest.raises(BadBackendAnswer) as proxy:
        asyncio.run(_read(len(ANSWER) - 1, BadBackendAnswer, decoded=True))
    assert proxy.value.message == f"the backend's answer is over {len(ANSWER) - 1} bytes"


@pytest.mark.parametrize(
    ("path", "query", "backend", "expected"),
    [
        ("/ai/embed", b"", "go", "http://go.test:4110/v1/embed"),
        ("/ai/embed", b"", "rust", "http://rust.test:3100/ai/embed"),
        # a path parameter and the query go on exactly as the client sent them
        (
            "/storage/a%2Fb/c d",
            b"x=1&y=%20",
            "go",
            "http://go.test:4110/v1/storage/a%2Fb/c d?x=1&y=%20",
        ),
        ("/_go/v1/storage/k", b"v=2", "rust", "http://rust.test:3100/storage/k?v=2"),
    ],
)
def test_the_backend_url_is_the_base_the_backends_path_and_the_raw_query(
    path: str, query: bytes, backend: Backend, expected: str
) -> None:
    routes = load_routes(ROOT / "config" / "routes.toml")
    match = routes.match(path)
    assert match is not None
    base = {"rust": "http://rust.test:3100", "go": "http://go.test:4110"}[backend]
    url = backend_url(base, match.route.faces[backend], match.params, query)
    assert str(url) == expected
