"""Composition root: builds the route table, flag view, upstream pools and proxy, and
dispatches each request by the socket it arrived on (proxy port or admin listener).

`create_app()` is the uvicorn factory: every spawned worker calls it and reads its settings
from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shim import logs
from shim.errors import NotFound
from shim.flags import FlagStore, FlagView, check_pins
from shim.proxy import Exchange, Proxy, send_error
from shim.routes import RouteTable, load_routes
from shim.settings import Settings, load_settings
from shim.types import Receive, Scope, Send
from shim.upstream import Upstream

log = logging.getLogger("shim.app")
HEALTHZ = "/_shim/healthz"
_HEALTHZ_BODY = orjson.dumps({"status": "ok"})


class ShimApp:
    """The ASGI app every worker serves on both sockets."""

    def __init__(self, settings: Settings, routes: RouteTable) -> None:
        self.settings = settings
        self.routes = routes
        self.store = FlagStore(settings.state_dir, routes, settings.pin)
        self.flags = FlagView(self.store, poll_seconds=settings.flag_poll_seconds)
        self.upstream = Upstream(settings)
        self.proxy = Proxy(routes, self.flags, self.upstream, settings)
        self.admin = build_admin(self)
        self._admin_address = (settings.admin_host, settings.admin_port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._on_admin_socket(scope):
                await self.admin(scope, receive, send)
            elif scope["path"] == HEALTHZ:
                await _healthz(send)
            elif scope["path"].startswith("/_shim/"):
                await send_error(
                    send,
                    NotFound("the admin API is on the admin listener only"),
                    Exchange(scope["method"], scope["path"], 0.0),
                )
            else:
                await self.proxy(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets are not part of any route: uvicorn closes them when we return

    def _on_admin_socket(self, scope: Scope) -> bool:
        """The socket the request came in on, never anything the client sent."""
        server = scope.get("server")
        return (
            server is not None
            and server[1] == self._admin_address[1]
            and (server[0] == self._admin_address[0] or self._admin_address[0] in ("0.0.0.0", "::"))
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Resources with one owner and one lifetime: pools and the flag watcher."""
        self.flags.refresh()
        await self.upstream.start()
        watcher = asyncio.create_task(self.flags.watch(), name="flag-watcher")
        log.info(
            "worker %d serving generation %d; rust=%s go=%s",
            os.getpid(),
            self.flags.state.generation,
            self.settings.rust_url,
            self.settings.go_url,
        )
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.upstream.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            async with self.running():
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                assert message["type"] == "lifespan.shutdown"
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        await send({"type": "lifespan.shutdown.complete"})


async def _healthz(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": _HEALTHZ_BODY})


def flags_document(app: ShimApp) -> dict[str, Any]:
    """Every endpoint's flag in force, as the admin API and `shim flags` show it."""
    endpoints = {}
    for name, route in app.routes.routes.items():
        effective = app.flags.effective(name)
        endpoints[name] = {
            **effective.flag.settings(),
            "source": effective.source,
            "pinned_by": effective.pinned_by,
            "go_only": route.go_only,
            "changed_at": effective.flag.changed_at,
            "actor": effective.flag.actor,
        }
    return {
        "generation": app.flags.state.generation,
        "load_errors": app.flags.load_errors,
        "worker": os.getpid(),
        "endpoints": endpoints,
    }


def build_admin(app: ShimApp) -> Starlette:
    """The admin listener's app: health and the flags as this worker serves them."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "worker": os.getpid()})

    async def flags(request: Request) -> Response:
        return JSONResponse(flags_document(app))

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(NotFound(f"no admin route {request.url.path}").to_dict(), 404)

    return Starlette(
        routes=[
            Route(HEALTHZ, healthz, methods=["GET"]),
            Route("/_shim/flags", flags, methods=["GET"]),
        ],
        exception_handlers={404: not_found},
    )


def create_app() -> ShimApp:
    """uvicorn factory: settings from the environment, route table from its file."""
    settings = load_settings()
    logs.configure(settings.log_level)
    routes = load_routes(settings.resolved_routes_file())
    check_pins(settings.pin, routes)
    return ShimApp(settings, routes)
