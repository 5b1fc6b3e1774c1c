"""The operator page: `GET /_shim/ui` on the admin listener, the whole cutover at a glance.

Server-rendered (Jinja2, templates and assets shipped in the package: no CDN, no build step).
The page polls `/_shim/ui/live` once a second for its live region (short polling, not
server-sent events: see the README's "Operator page" for the measurement). Forms work
without script; the one script (static/ui.js) only refreshes the live region and shows a lost
connection.

Reading needs no token. A change needs the admin token once, exchanged at `/_shim/ui/login`
for a signed, expiring, HttpOnly, SameSite=Strict session cookie; every form carries a CSRF
token bound to that session; a POST whose `Origin` is not the page's own is refused; every
response carries a Content-Security-Policy allowing only this origin. Changes go through
`gate.gated_set` / `FlagStore.rollback` with the generation the form was shown, like the CLI
and the API. What the page reads, and when, is `ui_read`; what it shows, `ui_view`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from shim.cutover.flag_state import UNCHANGED, Change, Unchanged
from shim.cutover.gate import GateDecision, gated_set
from shim.errors import Conflict, FlagError, ShimError
from shim.ops.sessions import (
    SESSION_SECONDS,
    csrf_nonce,
    new_csrf,
    new_session,
    session_of,
    signing_key,
)
from shim.ops.ui_read import Reader, guard_states
from shim.ops.ui_view import Inputs, evidence, rows_view
from shim.ops.views import audit_entry, audit_view, describe

if TYPE_CHECKING:
    from shim.ops.admin import AdminContext

HERE = Path(__file__).resolve().parent
SESSION_COOKIE, CSRF_COOKIE = "shim_session", "shim_csrf"
MAX_FORM_BYTES = 16 * 1024
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
ACTIONS: dict[str, dict[str, Any]] = {
    "serve_go": {"serve": "go"},
    "serve_rust": {"serve": "rust"},
    "shadow_on": {"shadow": True},
    "shadow_off": {"shadow": False},
    "canary": {},
}

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["describe"] = describe


# -- the routes -------------------------------------------------------------------------


class OperatorPage:
    """The page's handlers, one worker's: bound methods over the worker's parts (the admin
    app's own handlers are plain functions; the page also keeps a reader with caches)."""

    def __init__(self, context: AdminContext) -> None:
        self.context = context
        self.settings, self.store = context.settings, context.store
        self.reader = Reader(context)
        self.lock = asyncio.Lock()  # one reader at a time: its caches are not shared

    async def inputs(self) -> Inputs:
        guard = guard_states(self.context)
        async with self.lock:  # one self.reader at a time: its caches are not shared across threads
            return await asyncio.to_thread(self.reader.read, guard)

    def key(self) -> bytes | None:
        return signing_key(self.settings.admin_token) if self.settings.admin_token else None

    def session(self, request: Request) -> dict[str, Any] | None:
        k = self.key()
        value = request.cookies.get(SESSION_COOKIE)
        return session_of(k, value, now=time.time()) if k and value else None

    def page_model(self, request: Request, data: Inputs, **extra: Any) -> dict[str, Any]:
        query = request.query_params
        selected = query.get("endpoint") if query.get("endpoint") in self.context.routes else None
        audit_filter = query.get("audit") if query.get("audit") in self.context.routes else None
        try:
            offset = max(0, int(query.get("offset", "0")))
        except ValueError:
            offset = 0
        verdict = data.parity["endpoints"].get(selected) if selected else None
        return {
            "rows": rows_view(self.context.routes, data),
            "flags": data.flags,
            "workers": data.workers,
            "split_seconds": data.split_seconds,
            "selected": selected,
            "selected_flag": data.flags["endpoints"].get(selected) if selected else None,
            "verdict": verdict,
            "evidence": evidence(
                selected, verdict, data.parity_records, self.context.routes[selected].parity
            )
            if verdict and selected
            else None,
            "audit": audit_view(data.audit, endpoint=audit_filter, offset=offset),
            "audit_filter": audit_filter,
            "endpoints": list(self.context.routes.routes),
            "gate_on": self.settings.parity_gate,
            "query": request.url.query,
            **extra,
        }

    def render(
        self, name: str, model: dict[str, Any], status: int = 200, *, csrf: str | None = None
    ) -> Response:
        response = HTMLResponse(templates.get_template(name).render(**model), status)
        response.headers.update(SECURITY_HEADERS)
        if csrf is not None:
            response.set_cookie(
                CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/_shim/ui"
            )
        return response

    def csrf_for(self, request: Request) -> tuple[str, str | None]:
        """The request's CSRF token, and a new cookie value when it has none valid."""
        k = self.key()
        if k is None:
            return "", None
        value = request.cookies.get(CSRF_COOKIE, "")
        if csrf_nonce(k, value):
            return value, None
        value = new_csrf(k)
        return value, value

    async def page(self, request: Request, status: int = 200, **extra: Any) -> Response:
        token, cookie = self.csrf_for(request)
        defaults = {"notice": None, "problem": None, "refusal": None, "conflict": None}
        model = self.page_model(
            request, await self.inputs(), **{**defaults, "form_values": {}, **extra}
        )
        model.update(
            csrf=token, session=self.session(request), writes=self.settings.admin_token is not None
        )
        return self.render("page.html", model, status, csrf=cookie)

    async def index(self, request: Request) -> Response:
        """The operator page: every endpoint, its evidence, the audit trail, the actions."""
        done = request.query_params.get("done")
        notice = None
        if done and done.isdigit():
            notice = [audit_entry(r) for r in self.reader.audit() if r["generation"] == int(done)]
        return await self.page(request, notice=notice)

    async def live(self, request: Request) -> Response:
        """The parts of the page that change, polled by the page once a second."""
        model = self.page_model(request, await self.inputs())
        return self.render("live.html", model)

    async def entry(self, request: Request) -> Response:
        """One audit entry, with the state before and after."""
        generation = request.path_params["generation"]
        records = [r for r in self.reader.audit() if r["generation"] == generation]
        model = {
            "generation": generation,
            "records": [orjson.dumps(r, option=orjson.OPT_INDENT_2).decode() for r in records],
        }
        return self.render("entry.html", model, 200 if records else 404)

    def refuse(self, request: Request, status: int, message: str) -> Response:
        return self.render("refused.html", {"status": status, "message": message}, status)

    def foreign(self, request: Request) -> str | None:
        """Why a POST is refused before its form is read: a foreign or missing Origin."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin != own:
            return (
                f"refused: a change must come from this page ({own}), not from "
                f"{origin or 'a request without an Origin header'}"
            )
        return None

    async def checked_form(
        self, request: Request, *, login: bool = False
    ) -> Mapping[str, Any] | Response:
        """The POSTed form, or the refusal: foreign origin, CSRF, session."""
        why = self.foreign(request)
        if why:
            return self.refuse(request, 403, why)
        k = self.key()
        if k is None:
            return self.refuse(
                request,
                403,
                "changes are disabled: set SHIM_ADMIN_TOKEN (e.g. in the service's "
                "EnvironmentFile) and restart",
            )
        form = await form_of(request)
        given, cookie = str(form.get("csrf", "")), request.cookies.get(CSRF_COOKIE, "")
        nonce = csrf_nonce(k, given)
        if not nonce or not hmac.compare_digest(given, cookie):
            return self.refuse(
                request, 403, "refused: the form's CSRF token is missing or wrong; reload the page"
            )
        if not login:
            current = self.session(request)
            if current is None or current.get("n") != nonce:
                return self.refuse(request, 401, "log in with the admin token to make changes")
        return form

    async def login_page(self, request: Request) -> Response:
        """The form that exchanges the admin token for a session cookie."""
        token, cookie = self.csrf_for(request)
        model = {"csrf": token, "writes": self.settings.admin_token is not None, "error": None}
        return self.render("login.html", model, csrf=cookie)

    async def login(self, request: Request) -> Response:
        """Check the admin token once and set the signed, HttpOnly session cookie."""
        form = await self.checked_form(request, login=True)
        if isinstance(form, Response):
            return form
        assert self.settings.admin_token is not None
        k = signing_key(self.settings.admin_token)
        given = str(form.get("token", "")).encode()
        if not hmac.compare_digest(given, self.settings.admin_token.get_secret_value().encode()):
            csrf = str(form["csrf"])
            model = {"csrf": csrf, "writes": True, "error": "wrong admin token"}
            return self.render("login.html", model, 401)
        who = "".join(c for c in str(form.get("who", "")) if c.isalnum() or c in "._-@")[:32]
        nonce = csrf_nonce(k, str(form["csrf"]))
        assert nonce is not None
        value = new_session(k, who=who or "operator", nonce=nonce, now=time.time())
        response = RedirectResponse("/_shim/ui", 303)
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/_shim/ui",
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    async def logout(self, request: Request) -> Response:
        """End the session."""
        form = await self.checked_form(request)
        if isinstance(form, Response):
            return form
        response = RedirectResponse("/_shim/ui", 303)
        response.delete_cookie(SESSION_COOKIE, path="/_shim/ui")
        return response

    async def act(self, request: Request) -> Response:
        """A flip, rollback, shadow or canary change from the page, through the gate."""
        form = await self.checked_form(request)
        if isinstance(form, Response):
            return form
        who = (self.session(request) or {}).get("who", "operator")
        endpoint = str(form.get("endpoint", ""))
        action = str(form.get("action", ""))
        reason = str(form.get("reason", "")).strip()
        force = form.get("force") == "yes"
        back = f"/_shim/ui?endpoint={endpoint}" if endpoint in self.context.routes else "/_shim/ui"
        try:
            expected = int(str(form.get("expected_generation", "")))
        except ValueError:
            return self.refuse(request, 422, "the form carries no generation; reload the page")
        if not reason:
            return await self.page(request, 422, problem={"message": "every change needs a reason"})
        if force and form.get("confirm") != "yes":
            return await self.page(
                request,
                422,
                problem={"message": "forcing needs the box ticked that you read the evidence"},
            )
        actor = f"ui:{who}"
        try:
            if action in ("rollback", "rollback_all"):
                changes = await asyncio.to_thread(
                    self.store.rollback,
                    [endpoint] if action == "rollback" else None,
                    actor=actor,
                    reason=reason,
                    expected_generation=expected,
                )
                generation = changes[0].generation if changes else None
            elif action in ACTIONS and endpoint in self.context.routes:
                update: dict[str, Any] = dict(ACTIONS[action])
                percent: int | Unchanged | None = UNCHANGED
                if action == "canary":
                    text = str(form.get("percent", "")).strip()
                    percent = int(text) if text.isdigit() else None

                def gated(*, dry_run: bool) -> tuple[GateDecision, Change | None]:
                    return gated_set(
                        self.settings,
                        self.store,
                        self.context.parity,
                        endpoint,
                        serve=update.get("serve"),
                        shadow=update.get("shadow"),
                        percent=percent,
                        actor=actor,
                        reason=reason,
                        force=force and not dry_run,
                        dry_run=dry_run,
                        expected_generation=expected,
                    )

                decision, _ = await asyncio.to_thread(gated, dry_run=True)
                if not decision.allowed and not force:
                    return await self.page(
                        request, 412, refusal=refusal(decision), form_values=dict(form)
                    )
                _, change = await asyncio.to_thread(gated, dry_run=False)
                generation = change.generation if change else None
            else:
                return self.refuse(request, 422, f"unknown action {action!r} for {endpoint!r}")
        except Conflict as exc:
            shown = exc.expected if exc.expected is not None else exc.generation
            moved = [audit_entry(r) for r in self.reader.audit() if r["generation"] > shown]
            return await self.page(
                request,
                409,
                conflict={"expected": shown, "generation": exc.generation, "moved": moved},
            )
        except (FlagError, ShimError) as exc:
            return await self.page(request, exc.status_code, problem={"message": exc.message})
        if generation is not None:
            await self.context.workers.wait_applied_async(
                generation, within=self.settings.flip_wait_seconds
            )
            joiner = "&" if "?" in back else "?"
            return RedirectResponse(f"{back}{joiner}done={generation}", 303)
        return RedirectResponse(back, 303)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_shim/ui", self.index, methods=["GET"]),
            Route("/_shim/ui/live", self.live, methods=["GET"]),
            Route("/_shim/ui/audit/{generation:int}", self.entry, methods=["GET"]),
            Route("/_shim/ui/login", self.login_page, methods=["GET"]),
            Route("/_shim/ui/login", self.login, methods=["POST"]),
            Route("/_shim/ui/logout", self.logout, methods=["POST"]),
            Route("/_shim/ui/act", self.act, methods=["POST"]),
            Mount("/_shim/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static"),
        ]


def ui_routes(context: AdminContext) -> list[BaseRoute]:
    """The page's routes, mounted on the admin app (never on the proxy port)."""
    return OperatorPage(context).routes()


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form (the page's forms have no files): parsed here, not by
    python-multipart, which Starlette's `request.form()` would need for this alone."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def refusal(decision: GateDecision) -> dict[str, Any]:
    """The gate's refusal as the page shows it: the reason, the verdict and what forcing does."""
    return {
        "endpoint": decision.endpoint,
        "reason": decision.reason,
        "current": decision.current.settings(),
        "proposed": decision.proposed.settings(),
        "verdict": decision.verdict.to_dict() if decision.verdict else None,
        "warnings": decision.warnings,
    }
