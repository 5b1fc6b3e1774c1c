"""The admin listener's app: flags, rollback, health, readiness and metrics.

Served by the same workers as the proxy, on its own socket (loopback by default); a request
reaches it only by arriving on that socket. Reads are open to whoever can reach the socket;
writes need `Authorization: Bearer $SHIM_ADMIN_TOKEN` and are refused when none is set.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shim import metrics
from shim.cutover.flag_state import UNCHANGED, Change, pin_conflicts, resolve
from shim.cutover.flag_view import FlagView
from shim.cutover.flags import FlagStore
from shim.cutover.gate import gated_set
from shim.cutover.guard import Guard
from shim.cutover.store import Acknowledgements, Evidence
from shim.cutover.workers import Applied
from shim.errors import (
    AdminWritesDisabled,
    Conflict,
    InvalidValue,
    MethodNotAllowed,
    NotFound,
    ShimError,
    Unauthorized,
    render,
)
from shim.ops.ui import ui_routes
from shim.ops.views import flags_view, parity_view
from shim.routes import RouteTable
from shim.serving.upstream import Upstream
from shim.settings import Settings
from shim.types import BACKENDS

UI_PATH = "/_shim/ui"  # the operator page, linked from the index once it is served
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
FLAG_KEYS = frozenset(
    {"serve", "shadow", "percent", "reason", "force", "dry_run", "expected_generation"}
)
_ACTOR = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What the admin API works with: one worker's parts."""

    settings: Settings
    routes: RouteTable
    store: FlagStore
    flags: FlagView
    upstream: Upstream
    workers: Acknowledgements
    parity: Evidence
    guard: Guard | None = None  # this worker's guard, for the operator page's guard column


def flags_document(context: AdminContext) -> dict[str, Any]:
    """Every endpoint's flag in force, the generation, and which workers serve it."""
    return flags_view(
        context.flags.state,
        context.routes,
        context.store.pins,
        context.workers.live(),
        worker=os.getpid(),
        load_errors=context.flags.load_errors,
    )


def current_flags(context: AdminContext) -> dict[str, Any]:
    """The flags as the store holds them now (the worker's view may lag by one poll)."""
    state, _ = context.store.read_or_last_good()
    return flags_view(state, context.routes, context.store.pins, context.workers.live())


def change_document(change: Change) -> dict[str, Any]:
    return {
        "endpoint": change.endpoint,
        "before": change.before.settings(),
        "after": change.after.settings(),
        "generation": change.generation,
        "actor": change.after.actor,
        "reason": change.after.reason,
        "forced": change.forced,
        "gate": change.gate,
        "recovered": change.recovery.to_dict() if change.recovery else None,
    }


def authorize(request: Request, token: SecretStr | None) -> None:
    """Bearer token, compared in constant time; no token configured refuses every write."""
    if token is None:
        raise AdminWritesDisabled(
            "admin writes are disabled: set SHIM_ADMIN_TOKEN (e.g. in the service's "
            "EnvironmentFile) and restart, then send 'Authorization: Bearer <token>'"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>'")


def actor_of(request: Request) -> str:
    """`api:<X-Shim-Actor>` when given (a name, for the audit trail), else `api:<address>`."""
    named = request.headers.get("x-shim-actor", "")
    if _ACTOR.fullmatch(named):
        return f"api:{named}"
    return f"api:{request.client.host if request.client else 'unknown'}"


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is `{}` where that is allowed."""
    raw = await request.body()
    if not raw.strip() and optional:
        return {}
    try:
        document = orjson.loads(raw)
    except ValueError as exc:
        raise InvalidValue(
            f'the body is not JSON ({exc}); send a JSON object, e.g. \'{{"serve": "go"}}\''
        ) from None
    if not isinstance(document, dict):
        raise InvalidValue(
            f"the body must be a JSON object, not {_json_kind(document)}: "
            'e.g. \'{"serve": "go"}\''
        )
    return document


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


def flag_update(document: dict[str, Any]) -> dict[str, Any]:
    """Validate a PUT body into keyword arguments for FlagStore.set."""
    unknown = set(document) - FLAG_KEYS
    if unknown:
        raise InvalidValue(f"unknown key {sorted(unknown)[0]!r}; allowed: {sorted(FLAG_KEYS)}")
    update: dict[str, Any] = {}
    if "serve" in document:
        if document["serve"] not in BACKENDS:
            raise InvalidValue('serve must be "rust" or "go"')
        update["serve"] = document["serve"]
    if "shadow" in document:
        if not isinstance(document["shadow"], bool):
            raise InvalidValue("shadow must be true or false")
        update["shadow"] = document["shadow"]
    if "percent" in document:
        percent = document["percent"]  # null clears it
        if percent is not None and (
            isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100
        ):
            raise InvalidValue("percent must be a whole number from 0 to 100, or null")
        update["percent"] = percent
    if "reason" in document:
        if not isinstance(document["reason"], str | None):
            raise InvalidValue("reason must be a string")
        update["reason"] = document["reason"]
    if "expected_generation" in document:
        expected = document["expected_generation"]
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise InvalidValue("expected_generation must be the generation you read (an integer)")
        update["expected_generation"] = expected
    for name in ("force", "dry_run"):
        if name in document:
            if not isinstance(document[name], bool):
                raise InvalidValue(f"{name} must be true or false")
            update[name] = document[name]
    update["expected_generation"] = expected_generation(document)
    return update


def expected_generation(document: dict[str, Any]) -> int | None:
    value = document.get("expected_generation")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidValue("expected_generation must be the integer generation you were shown")
    return value


def context_of(request: Request) -> AdminContext:
    """The worker's parts the handlers work with, put on the app by `build_admin`."""
    context: AdminContext = request.app.state.admin
    return context


async def wait_applied(context: AdminContext, generation: int) -> Applied:
    return await context.workers.wait_applied_async(
        generation, within=context.settings.flip_wait_seconds
    )


async def index(request: Request) -> Response:
    """This list of the admin routes."""
    return JSONResponse(route_index(request.app.routes))


async def healthz(request: Request) -> Response:
    """The worker is alive: {"status": "ok", "worker": PID}."""
    return JSONResponse({"status": "ok", "worker": os.getpid()})


async def readyz(request: Request) -> Response:
    """200 when both backends answer HTTP, else 503; flag generation and warnings."""
    context = context_of(request)
    settings, store = context.settings, context.store
    checks = await asyncio.gather(
        *(context.upstream.check_health(b, settings.backend_health_path) for b in BACKENDS)
    )
    backends = dict(zip(BACKENDS, checks, strict=True))
    ready = all(check["reachable"] for check in checks)
    state = context.flags.state
    document = {
        "ready": ready,
        "backends": backends,
        "generation": state.generation,
        "flag_load_errors": context.flags.load_errors,
        "flag_store": store.backend.status(),
        "warnings": pin_conflicts(state, context.routes, store.pins),
    }
    return JSONResponse(document, 200 if ready else 503)


async def get_flags(request: Request) -> Response:
    """Every endpoint's flag in force, the generation, each live worker's generation."""
    return JSONResponse(await asyncio.to_thread(flags_document, context_of(request)))


async def put_flag(request: Request) -> Response:
    """Change one flag: {"serve", "shadow", "percent", "reason", "force", "dry_run"}."""
    context = context_of(request)
    settings, store = context.settings, context.store
    authorize(request, settings.admin_token)
    endpoint = request.path_params["endpoint"]
    update = flag_update(await json_object(request))
    decision, change = await asyncio.to_thread(
        gated_set,
        settings,
        store,
        context.parity,
        endpoint,
        serve=update.get("serve"),
        shadow=update.get("shadow"),
        percent=update.get("percent", UNCHANGED),
        actor=actor_of(request),
        reason=update.get("reason"),
        force=update.get("force", False),
        dry_run=update.get("dry_run", False),
        expected_generation=update.get("expected_generation"),
    )
    if update.get("dry_run"):
        return JSONResponse({"dry_run": True, **decision.to_dict()})
    if change is None:
        current = resolve(store.read(), context.routes, store.pins, endpoint)
        return JSONResponse(
            {"endpoint": endpoint, "changed": False, "flag": current.flag.settings()}
        )
    applied = await wait_applied(context, change.generation)
    return JSONResponse(
        {
            **change_document(change),
            "changed": True,
            "gate": decision.reason,
            "applied": applied.to_dict(),
        }
    )


async def rollback(request: Request) -> Response:
    """Send endpoints back to rust: {"endpoints": [...], "reason": "..."} (optional)."""
    context = context_of(request)
    authorize(request, context.settings.admin_token)
    document = await json_object(request, optional=True)
    unknown = set(document) - {"endpoints", "reason", "expected_generation"}
    if unknown:
        raise InvalidValue(
            f"unknown key {sorted(unknown)[0]!r}; allowed: endpoints, reason, expected_generation"
        )
    endpoints = document.get("endpoints")
    if endpoints is not None and (
        not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints)
    ):
        raise InvalidValue("endpoints must be a list of endpoint names")
    changes = await asyncio.to_thread(
        context.store.rollback,
        endpoints or None,
        actor=actor_of(request),
        reason=document.get("reason"),
        expected_generation=expected_generation(document),
    )
    applied = await wait_applied(context, changes[0].generation) if changes else None
    return JSONResponse(
        {
            "changes": [change_document(c) for c in changes],
            "applied": applied.to_dict() if applied else None,
        }
    )


async def parity(request: Request) -> Response:
    """Every shadowable endpoint's parity verdict and evidence."""
    context = context_of(request)
    hours = context.settings.parity_window_hours
    records = await asyncio.to_thread(context.parity.samples, window_seconds=hours * 3600)
    return JSONResponse(parity_view(context.routes, records, window_hours=hours))


async def metrics_text(request: Request) -> Response:
    """Prometheus text format, summed over every worker."""
    metrics.flush()  # this worker's last second; the others flush on their own
    body = await asyncio.to_thread(metrics.render, context_of(request).store.backend.audit)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def shim_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ShimError)
    if isinstance(exc, Conflict) and exc.state is None:
        exc.state = await asyncio.to_thread(current_flags, context_of(request))
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        given = {k.lower(): v for k, v in (exc.headers or {}).items()}
        allowed = frozenset(m.strip() for m in given.get("allow", "").split(",") if m.strip())
        error: ShimError = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path} "
            f"(allowed: {', '.join(sorted(allowed))})",
            allowed=allowed,
        )
    else:
        error = NotFound(f"no admin route {request.url.path}: GET / lists the admin routes")
    return error_response(error)


ADMIN_ROUTES: tuple[BaseRoute, ...] = (
    Route("/", index, methods=["GET"]),
    Route("/_shim/healthz", healthz, methods=["GET"]),
    Route("/_shim/readyz", readyz, methods=["GET"]),
    Route("/_shim/flags", get_flags, methods=["GET"]),
    Route("/_shim/flags/{endpoint}", put_flag, methods=["PUT"]),
    Route("/_shim/rollback", rollback, methods=["POST"]),
    Route("/_shim/parity", parity, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
)


def build_admin(context: AdminContext) -> Starlette:
    """The admin app for one worker: the plain handlers above, the page's routes, and the
    worker's parts on `app.state` where `context_of` finds them."""
    app = Starlette(
        routes=[*ADMIN_ROUTES, *ui_routes(context)],
        exception_handlers={ShimError: shim_error, HTTPException: http_error},
    )
    app.state.admin = context
    return app


def route_index(all_routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """`GET /`: every admin route with its methods and what it answers (the handler's
    docstring), and where the operator page is once one is served (its static files,
    a mount, are not listed)."""
    # The page's own form and poll routes are the page's business: the page is listed once.
    routes = [
        route
        for route in all_routes
        if isinstance(route, Route) and not route.path.startswith(UI_PATH + "/")
    ]
    listed = [
        {
            "path": route.path,
            "methods": sorted((route.methods or set()) - {"HEAD"}),
            "what": (inspect.getdoc(route.endpoint) or "").split("\n")[0],
            "needs_token": bool(route.methods and route.methods & WRITE_METHODS),
        }
        for route in routes
    ]
    paths = {route.path for route in routes}
    return {
        "service": "cutover-shim admin",
        "routes": listed,
        "ui": UI_PATH if UI_PATH in paths else None,
        "auth": "writes need 'Authorization: Bearer $SHIM_ADMIN_TOKEN'",
    }


def error_response(error: ShimError) -> Response:
    """A ShimError as a Starlette response, rendered by `shim.errors.render` like every
    other error the shim answers."""
    rendered = render(error)
    response = Response(rendered.body, rendered.status)
    response.raw_headers = rendered.headers
    return response
