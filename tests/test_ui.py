"""The operator page, in Debian's Chromium driven by Playwright, against a real `shim serve`.

One shim (two workers, parity gate on, an admin token) and one browser serve the whole module
to keep the suite's added time near a minute; each test uses its own endpoints and its own
browser context (its own cookies).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shim.cutover.file_store import read_audit
from shim.ops.sessions import SESSION_SECONDS, new_csrf, new_session, session_of
from shim.ops.ui_view import histogram_svg
from shim.ops.views import audit_view
from tests.flipping import wait_for_generation, wait_for_parity
from tests.servers import Shim

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "ui-t0ken-5ecret"
browser_only = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: `apt-get install chromium` (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory, backends: dict[str, str]) -> Iterator[Shim]:
    server = Shim(
        tmp_path_factory.mktemp("ui"),
        rust_url=backends["rust"],
        go_url=backends["go"],
        workers=2,
        SHIM_PARITY_GATE="true",
        SHIM_ADMIN_TOKEN=TOKEN,
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: `apt-get install chromium` (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def log_in(page: Any, shim: Shim, who: str = "alice") -> None:
    page.goto(f"{shim.admin_url}/_shim/ui/login")
    page.fill("input[name=token]", TOKEN)
    page.fill("input[name=who]", who)
    page.click("button[type=submit]")
    page.wait_for_url(f"{shim.admin_url}/_shim/ui")


def submit(page: Any, endpoint: str, action: str, reason: str, percent: str = "") -> None:
    page.goto(f"{page.url.split('/_shim/')[0]}/_shim/ui?endpoint={endpoint}")
    act(page, action, reason, percent)


def act(page: Any, action: str, reason: str, percent: str = "") -> None:
    page.fill("#change-form input[name=reason]", reason)
    if percent:
        page.fill("#change-form input[name=percent]", percent)
    with page.expect_navigation():
        page.click(f"#change-form button[value={action}]")


def api_flags(shim: Shim) -> dict[str, Any]:
    return httpx.get(f"{shim.admin_url}/_shim/flags").json()


# -- in the browser ------------------------------------------------------------------------


@browser_only
def test_the_page_lists_every_endpoint_as_the_api_does(shim: Shim, page: Any) -> None:
    page.goto(f"{shim.admin_url}/_shim/ui")
    rows = page.eval_on_selector_all(
        "#endpoints tbody tr", "rows => rows.map(r => [r.dataset.endpoint, r.dataset.serve])"
    )
    flags = api_flags(shim)["endpoints"]
    assert rows == [[name, flag["serve"]] for name, flag in flags.items()]
    assert len(rows) >= 8  # the contract's eight, and any declared in the route table


@browser_only
def test_a_cli_flip_shows_on_the_open_page_within_two_seconds(shim: Shim, page: Any) -> None:
    page.goto(f"{shim.admin_url}/_shim/ui")
    page.wait_for_selector('tr[data-endpoint="sql"][data-serve="rust"]')
    shim.cli("flags", "set", "sql", "go", "--force", "--reason", "live test")
    flipped = time.monotonic()
    page.wait_for_selector('tr[data-endpoint="sql"][data-serve="go"]', timeout=2000)
    seen = time.monotonic() - flipped
    assert seen < 2.0
    assert "live test" in page.inner_text('tr[data-endpoint="sql"]')
    shim.cli("flags", "set", "sql", "rust", "--reason", "back")
    page.wait_for_selector('tr[data-endpoint="sql"][data-serve="rust"]', timeout=2000)


@browser_only
def test_no_request_leaves_the_admin_origin_and_the_console_has_no_errors(
    shim: Shim, page: Any
) -> None:
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else 0)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{shim.admin_url}/_shim/ui?endpoint=embed")
    page.wait_for_timeout(2300)  # two polls of the live region
    page.goto(f"{shim.admin_url}/_shim/ui/login")
    assert any("/_shim/ui/live" in url for url in requested)
    assert all(url.startswith(shim.admin_url + "/") for url in requested), requested
    assert problems == []


@browser_only
def test_a_lost_connection_is_shown_and_clears_when_it_is_back(shim: Shim, page: Any) -> None:
    page.goto(f"{shim.admin_url}/_shim/ui")
    page.wait_for_selector("#status.ok")
    page.route("**/_shim/ui/live*", lambda route: route.abort())
    page.wait_for_selector("#lost", state="visible", timeout=3000)
    assert "connection lost" in page.inner_text("#status")
    page.unroute("**/_shim/ui/live*")
    page.wait_for_selector("#lost", state="hidden", timeout=3000)


@browser_only
def test_login_is_refused_with_a_wrong_token_and_the_session_cookie_is_locked_down(
    shim: Shim, page: Any
) -> None:
    page.goto(f"{shim.admin_url}/_shim/ui/login")
    page.fill("input[name=token]", "not-the-token")
    with page.expect_response(lambda r: r.url.endswith("/_shim/ui/login")) as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 401
    assert "wrong admin token" in page.inner_text("#login-error")
    assert not [c for c in page.context.cookies() if c["name"] == "shim_session"]

    log_in(page, shim)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "shim_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert time.time() < cookie["expires"] <= time.time() + SESSION_SECONDS + 5
    assert TOKEN not in cookie["value"]
    assert TOKEN not in page.content()
    assert "ui:alice" in page.inner_text("header")
    stored = page.evaluate(
        "() => [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage)]"
    )
    assert "shim_session" not in stored[0] and stored[1:] == ["{}", "{}"]


@browser_only
def test_the_gate_refuses_without_evidence_then_a_page_flip_after_shadow_pass_is_served_and_audited(
    shim: Shim, page: Any
) -> None:
    log_in(page, shim)
    submit(page, "embed", "serve_go", "first try")
    refusal = page.inner_text("#refusal")
    assert "parity gate refused" in refusal and "INCONCLUSIVE" in refusal
    assert api_flags(shim)["endpoints"]["embed"]["serve"] == "rust"
    assert page.is_visible("#force-form")  # forcing is a separate, explicit step

    act(page, "shadow_on", "gather evidence for the flip")
    assert "Done" in page.inner_text("#notice")
    for i in range(20):
        assert httpx.post(f"{shim.url}/ai/embed", json={"texts": [f"ui {i}"]}).status_code == 200
    assert wait_for_parity(shim, "embed", samples=20)["verdict"] == "PASS"
    page.wait_for_selector('tr[data-endpoint="embed"] .verdict.pass', timeout=3000)
    act(page, "serve_go", "parity PASS on shadow traffic")
    assert "rust+shadow → go+shadow" in page.inner_text("#notice")
    served = httpx.post(f"{shim.url}/ai/embed", json={"texts": ["after"]})
    assert served.headers["x-shim-backend"] == "go"
    record = read_audit(shim.state_dir, "embed")[-1]
    assert record["actor"] == "ui:alice" and record["reason"] == "parity PASS on shadow traffic"
    assert record["gate"]["decision"] == "passed" and "forced" not in record


@browser_only
def test_forcing_past_the_gate_is_a_separate_step_audited_as_forced(shim: Shim, page: Any) -> None:
    log_in(page, shim, who="bob")
    submit(page, "retrieve", "canary", "try a canary", percent="10")
    assert "INCONCLUSIVE" in page.inner_text("#refusal")
    page.click("#force-form button")  # the box is not ticked: the browser will not submit
    assert api_flags(shim)["endpoints"]["retrieve"]["percent"] is None
    page.check("#force-form input[name=confirm]")
    with page.expect_navigation():
        page.click("#force-form button")
    assert api_flags(shim)["endpoints"]["retrieve"]["percent"] == 10
    record = read_audit(shim.state_dir, "retrieve")[-1]
    assert record["forced"] is True and record["actor"] == "ui:bob"
    assert record["reason"] == "try a canary"
    submit(page, "retrieve", "rollback", "end of the drill")
    assert api_flags(shim)["endpoints"]["retrieve"]["percent"] is None


@browser_only
def test_a_stale_form_is_refused_and_shows_what_changed(shim: Shim, page: Any) -> None:
    log_in(page, shim)
    page.goto(f"{shim.admin_url}/_shim/ui?endpoint=storage")
    shown = int(page.get_attribute("#expected-generation", "value"))
    shim.cli("flags", "set", "vectors_search", "rust", "--shadow", "--reason", "meanwhile")
    page.wait_for_selector("#stale", state="visible", timeout=3000)
    with page.expect_response(lambda r: "/_shim/ui/act" in r.url) as answer:
        act(page, "shadow_on", "stale decision")
    assert answer.value.status == 409
    conflict = page.inner_text("#conflict")
    assert f"from generation {shown}" in conflict
    assert "vectors_search rust → rust+shadow by cli:" in conflict and "meanwhile" in conflict
    assert api_flags(shim)["endpoints"]["storage"]["shadow"] is False
    act(page, "shadow_on", "decided again on what is there now")  # the fresh form
    assert api_flags(shim)["endpoints"]["storage"]["shadow"] is True


# -- over HTTP -----------------------------------------------------------------------------


@contextlib.contextmanager
def logged_in_client(shim: Shim) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a session, as the login form gives one, and its CSRF token."""
    with httpx.Client(base_url=shim.admin_url, headers={"origin": shim.admin_url}) as client:
        form = client.get("/_shim/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        login = client.post("/_shim/ui/login", data={"csrf": csrf.group(1), "token": TOKEN})
        assert login.status_code == 303 and "shim_session" in client.cookies
        yield client, csrf.group(1)


def test_csrf_a_foreign_origin_and_a_missing_session_are_refused(shim: Shim) -> None:
    with logged_in_client(shim) as (client, csrf):
        before = len(read_audit(shim.state_dir))
        generation = str(api_flags(shim)["generation"])
        form = {
            "csrf": csrf,
            "endpoint": "chat",
            "action": "shadow_off",
            "reason": "x",
            "expected_generation": generation,
        }
        wrong_csrf = client.post("/_shim/ui/act", data={**form, "csrf": new_csrf(b"k" * 32)})
        assert wrong_csrf.status_code == 403 and "CSRF" in wrong_csrf.text
        foreign = client.post("/_shim/ui/act", data=form, headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403 and "evil.example" in foreign.text
        no_origin = httpx.post(f"{shim.admin_url}/_shim/ui/act", data=form, cookies=client.cookies)
        assert no_origin.status_code == 403
        anonymous = httpx.post(
            f"{shim.admin_url}/_shim/ui/act",
            data=form,
            headers={"origin": shim.admin_url},
            cookies={"shim_csrf": csrf},
        )
        assert anonymous.status_code == 401
        assert len(read_audit(shim.state_dir)) == before
        page = client.get("/_shim/ui")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert TOKEN not in page.text


def test_the_proxy_port_never_serves_the_page(shim: Shim) -> None:
    for path in ("/_shim/ui", "/_shim/ui/live", "/_shim/ui/static/ui.js", "/_shim/ui/login"):
        answer = httpx.get(f"{shim.url}{path}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{shim.admin_url}/_shim/ui").status_code == 200


def test_the_api_refuses_a_stale_expected_generation_with_409_and_the_current_state(
    shim: Shim,
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = f"{shim.admin_url}/_shim/flags/chat"
    shown = api_flags(shim)["generation"]
    moved = httpx.put(api, json={"serve": "rust", "percent": None, "reason": "r"}, headers=auth)
    assert moved.status_code == 200
    shim.cli("flags", "set", "sql", "rust", "--shadow", "--reason", "moves the generation")
    stale = httpx.put(api, json={"serve": "go", "expected_generation": shown}, headers=auth)
    assert stale.status_code == 409
    body = stale.json()
    assert body["error"]["code"] == "conflict"
    assert body["state"]["generation"] > shown  # the whole flags view, as the API shows it
    assert body["state"]["endpoints"]["sql"]["shadow"] is True
    current = body["state"]["generation"]
    fresh = httpx.put(
        api,
        json={"serve": "rust", "shadow": False, "expected_generation": current, "reason": "ok"},
        headers=auth,
    )
    assert fresh.status_code == 200
    wait_for_generation(shim, current)


# -- pure parts ----------------------------------------------------------------------------


def test_audit_view_is_newest_first_filtered_and_paginated() -> None:
    records = [
        {
            "endpoint": "embed" if i % 2 else "sql",
            "generation": i,
            "before": {"serve": "rust"},
            "after": {"serve": "go"},
            "time": f"t{i}",
        }
        for i in range(1, 10_001)
    ]
    first = audit_view(records, limit=50)
    assert first["total"] == 10_000 and [e["generation"] for e in first["entries"][:2]] == [
        10_000,
        9_999,
    ]
    embed = audit_view(records, endpoint="embed", offset=50, limit=50)
    assert embed["total"] == 5_000
    assert embed["entries"][0]["generation"] == 9_999 - 100
    assert all(e["endpoint"] == "embed" for e in embed["entries"])
    assert embed["entries"][0]["id"] == "g9899-embed"


def test_sessions_are_signed_and_expire() -> None:
    key = b"k" * 32
    value = new_session(key, who="alice", nonce="n1", now=1000.0)
    assert session_of(key, value, now=1001.0) == {
        "who": "alice",
        "n": "n1",
        "exp": 1000 + SESSION_SECONDS,
    }
    assert session_of(key, value, now=1000.0 + SESSION_SECONDS + 1) is None
    assert session_of(b"x" * 32, value, now=1001.0) is None
    body, _, signature = value.partition(".")
    assert session_of(key, body[:-2] + "AA." + signature, now=1001.0) is None


def test_the_cosine_chart_marks_the_bins_that_fail_the_threshold() -> None:
    svg = histogram_svg([0.5, 5.5, 5.6], edges=[0, 1, 2, 3, 4, 5, 6], threshold=4, labels=["a"])
    assert svg.count('class="bad"') == 4 and svg.count('class="good"') == 2
    assert ">2</text>" in svg and ">1</text>" in svg
