"""The admin listener's app: flags, rollback, health, readiness and metrics.

Served by the same workers as the proxy, on its own socket (loopback by default); a request
reaches it only by arriving on that socket. Reads are open to whoever can reach the socket;
writes need `Authorization: Bearer $SHIM_ADMIN_TOKEN` and are refused when none is set.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shim import metrics
from shim.errors import (
    AdminWritesDisabled,
    InvalidValue,
    MethodNotAllowed,
    NotFound,
    ShimError,
    Unauthorized,
)
from shim.flags import Change, FlagStore, FlagView, pin_conflicts, resolve
from shim.gate import gated_set
from shim.parity import verdicts as parity_verdicts
from shim.routes import RouteTable
from shim.settings import Settings
from shim.store import Acknowledgements, Evidence
from shim.types import BACKENDS
from shim.upstream import Upstream
from shim.workers import Applied

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


def flags_document(context: AdminContext) -> dict[str, Any]:
    """Every endpoint's flag in force, the generation, and which workers serve it."""
    state = context.flags.state
    endpoints = {}
    for name, route in context.routes.routes.items():
        effective = resolve(state, context.routes, context.store.pins, name)
        endpoints[name] = {
            **effective.flag.settings(),
            "source": effective.source,
            "pinned_by": effective.pinned_by,
            "go_only": route.go_only,
            "changed_at": effective.flag.changed_at,
            "actor": effective.flag.actor,
            "reason": effective.flag.reason,
        }
    workers = context.workers.live()
    return {
        "generation": state.generation,
        "worker": os.getpid(),
        "load_errors": context.flags.load_errors,
        "workers": [
            {
                "pid": w.pid,
                "generation": w.generation,
                "heartbeat_age_s": round(w.age, 2),
                "applied": w.generation >= state.generation,
            }
            for w in workers
        ],
        "endpoints": endpoints,
        "warnings": pin_conflicts(state, context.routes, context.store.pins),
    }


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
    raw = await request.body()
    if not raw.strip() and optional:
        return {}
    try:
        document = orjson.loads(raw)
    except ValueError:
        raise InvalidValue("the body must be a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidValue("the body must be a JSON object")
    return document


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
        update["percent"] = document["percent"]  # null clears it; the store checks the range
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
    return update


def build_admin(context: AdminContext) -> Starlette:
    """The admin app for one worker."""
    settings, store = context.settings, context.store

    async def wait(generation: int) -> Applied:
        return await context.workers.wait_applied_async(
            generation, within=settings.flip_wait_seconds
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "worker": os.getpid()})

    async def readyz(request: Request) -> Response:
        probes = await asyncio.gather(
            *(context.upstream.probe(b, settings.backend_health_path) for b in BACKENDS)
        )
        backends = dict(zip(BACKENDS, probes, strict=True))
        ready = all(probe["reachable"] for probe in probes)
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
        return JSONResponse(await asyncio.to_thread(flags_document, context))

    async def put_flag(request: Request) -> Response:
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
            percent=update.get("percent", ...),
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
        applied = await wait(change.generation)
        return JSONResponse(
            {
                **change_document(change),
                "changed": True,
                "gate": decision.reason,
                "applied": applied.to_dict(),
            }
        )

    async def rollback(request: Request) -> Response:
        authorize(request, settings.admin_token)
        document = await json_object(request, optional=True)
        unknown = set(document) - {"endpoints", "reason"}
        if unknown:
            raise InvalidValue(f"unknown key {sorted(unknown)[0]!r}; allowed: endpoints, reason")
        endpoints = document.get("endpoints")
        if endpoints is not None and (
            not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints)
        ):
            raise InvalidValue("endpoints must be a list of endpoint names")
        changes = await asyncio.to_thread(
            store.rollback,
            endpoints or None,
            actor=actor_of(request),
            reason=document.get("reason"),
        )
        applied = await wait(changes[0].generation) if changes else None
        return JSONResponse(
            {
                "changes": [change_document(c) for c in changes],
                "applied": applied.to_dict() if applied else None,
            }
        )

    async def parity(request: Request) -> Response:
        records = await asyncio.to_thread(
            context.parity.samples, window_seconds=settings.parity_window_hours * 3600
        )
        results = parity_verdicts(context.routes, records)
        return JSONResponse(
            {
                "window_hours": settings.parity_window_hours,
                "endpoints": {name: verdict.to_dict() for name, verdict in results.items()},
            }
        )

    async def metrics_text(request: Request) -> Response:
        metrics.flush()  # this worker's last second; the others flush on their own
        body = await asyncio.to_thread(metrics.render, settings.state_dir, store.backend.audit)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def shim_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ShimError)
        headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(exc.to_dict(), exc.status_code, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            error: ShimError = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}", allowed=frozenset()
            )
        else:
            error = NotFound(f"no admin route {request.url.path}")
        return JSONResponse(error.to_dict(), error.status_code, headers=exc.headers)

    return Starlette(
        routes=[
            Route("/_shim/healthz", healthz, methods=["GET"]),
            Route("/_shim/readyz", readyz, methods=["GET"]),
            Route("/_shim/flags", get_flags, methods=["GET"]),
            Route("/_shim/flags/{endpoint}", put_flag, methods=["PUT"]),
            Route("/_shim/rollback", rollback, methods=["POST"]),
            Route("/_shim/parity", parity, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ],
        exception_handlers={ShimError: shim_error, HTTPException: http_error},
    )
