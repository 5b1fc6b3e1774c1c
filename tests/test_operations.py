"""The operator's surface: admin listener, tokens, pins, verified flips, metrics."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shim.metrics import LATENCY_BUCKETS, RequestTally, add_to_histogram
from tests.servers import ROOT, SHIM, Shim, free_port

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def raw_request(port: int, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send exactly these bytes: no client library normalises the path for us."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def audit(shim: Shim) -> list[dict[str, object]]:
    path = shim.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    "target",
    [
        "/_shim/flags",
        "/_go/../_shim/flags",
        "/_go/%2e%2e/_shim/flags",
        "/_shim%2Fflags",
        "/%5Fshim/flags",
        "/_go/v1/../../_shim/flags",
        "/_shim/readyz",
        "/metrics",
        "/_shim/rollback",
        "/_go/_shim/flags",
        "/storage/../_shim/flags",
    ],
)
def test_admin_paths_are_unreachable_from_the_proxy_port(
    start_shim: Callable[..., Shim], target: str
) -> None:
    shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    status, body = raw_request(shim.port, target)
    assert status in (400, 404), (target, status, body)
    document = json.loads(body)
    assert "error" in document and "generation" not in body.decode()
    post_status, _ = raw_request(shim.port, "/_shim/rollback", method="POST")
    assert post_status == 404
    assert audit(shim) == []


def test_only_healthz_answers_under_shim_on_the_proxy_port(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim()
    status, body = raw_request(shim.port, "/_shim/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_admin_writes_need_the_right_token_and_are_audited_once(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    url = f"{shim.admin_url}/_shim/flags/embed"
    body = {"serve": "go", "reason": "api cutover"}
    missing = httpx.put(url, json=body)
    wrong = httpx.put(url, json=body, headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert audit(shim) == []
    right = httpx.put(url, json=body, headers={**AUTH, "X-Shim-Actor": "alice"})
    assert right.status_code == 200, right.text
    assert right.json()["applied"]["complete"] is True
    served = httpx.post(f"{shim.url}/ai/embed", json={"texts": ["a"]})
    assert served.headers["x-shim-backend"] == "go"
    [record] = audit(shim)
    assert record["actor"] == "api:alice" and record["reason"] == "api cutover"
    assert record["before"]["serve"] == "rust" and record["after"]["serve"] == "go"
    again = httpx.put(url, json=body, headers=AUTH)
    assert again.json()["changed"] is False and len(audit(shim)) == 1
    rollback = httpx.post(f"{shim.admin_url}/_shim/rollback", headers=AUTH)
    assert [c["endpoint"] for c in rollback.json()["changes"]] == ["embed"]
    assert len(audit(shim)) == 2
    history = shim.cli("flags", "--history", "embed").stdout
    assert "api:alice" in history and "go -> rust" in history


def test_without_a_configured_token_writes_are_refused_saying_how_to_enable_them(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim()
    response = httpx.put(f"{shim.admin_url}/_shim/flags/embed", json={"serve": "go"}, headers=AUTH)
    assert response.status_code == 403
    assert "SHIM_ADMIN_TOKEN" in response.json()["error"]["message"]
    assert httpx.get(f"{shim.admin_url}/_shim/flags").status_code == 200  # reads stay open


def test_pinned_endpoint_is_409_naming_the_variable_and_readyz_warns(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    shim.cli("flags", "set", "embed", "go")
    shim.stop()
    shim.server.env["SHIM_PIN__EMBED"] = "rust"
    shim.start()
    response = httpx.put(f"{shim.admin_url}/_shim/flags/embed", json={"serve": "go"}, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "flag_pinned"
    assert "SHIM_PIN__EMBED" in response.json()["error"]["message"]
    ready = httpx.get(f"{shim.admin_url}/_shim/readyz").json()
    assert any("SHIM_PIN__EMBED" in w and "restart keeps the pin" in w for w in ready["warnings"])
    # An operator's shell lacks the service's environment: the pin comes from the workers.
    operator_env = {k: v for k, v in shim.env.items() if k != "SHIM_PIN__EMBED"}
    operator = subprocess.run(
        [*SHIM, "flags"], env=operator_env, capture_output=True, text=True, cwd=ROOT
    )
    assert "SHIM_PIN__EMBED" in operator.stdout and "warning: embed" in operator.stdout
    refused = subprocess.run(
        [*SHIM, "flags", "set", "embed", "go"],
        env=operator_env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert refused.returncode == 1 and "SHIM_PIN__EMBED" in refused.stderr


@pytest.mark.parametrize(
    ("endpoint", "body", "status"),
    [
        ("matrix_search", {"serve": "rust"}, 422),
        ("embed", {"sevre": "go"}, 422),
        ("embed", {"percent": 250}, 422),
        ("embed", {"serve": "python"}, 422),
        ("embed", {"shadow": "yes"}, 422),
        ("nope", {"serve": "go"}, 404),
    ],
)
def test_invalid_flag_changes_are_refused_with_a_json_error(
    start_shim: Callable[..., Shim], endpoint: str, body: dict[str, object], status: int
) -> None:
    shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    response = httpx.put(f"{shim.admin_url}/_shim/flags/{endpoint}", json=body, headers=AUTH)
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert audit(shim) == []


def test_flip_reports_every_worker_applied_and_traffic_confirms(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=4, SHIM_ADMIN_TOKEN=TOKEN)
    cli = shim.cli("flags", "set", "embed", "go")
    assert "applied by 4/4 workers" in cli.stdout
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        seen = {
            client.post(f"{shim.url}/ai/embed", json={"texts": ["a"]}).headers["x-shim-backend"]
            for _ in range(40)
        }
    assert seen == {"go"}
    api = httpx.put(f"{shim.admin_url}/_shim/flags/embed", json={"serve": "rust"}, headers=AUTH)
    assert api.json()["applied"]["summary"] == "applied by 4/4 workers"
    document = httpx.get(f"{shim.admin_url}/_shim/flags").json()
    assert len(document["workers"]) == 4 and all(w["applied"] for w in document["workers"])


def scrape(shim: Shim) -> dict[str, float]:
    response = httpx.get(f"{shim.admin_url}/metrics")
    assert response.status_code == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True)
            values[key] = sample.value
    return values


def embed_requests(values: dict[str, float]) -> float:
    return sum(
        v
        for k, v in values.items()
        if k.startswith("shim_requests_total") and '"endpoint": "embed"' in k
    )


def test_metrics_count_every_request_exactly_across_two_workers(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=2)
    before = embed_requests(scrape(shim))
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for i in range(60):
            face = "/ai/embed" if i % 2 else "/v1/embed"
            assert client.post(shim.url + face, json={"texts": [f"t{i}"]}).status_code == 200
    # Each worker publishes its tally once a second: all 60 within two, and never more.
    deadline = time.monotonic() + 3
    while embed_requests(values := scrape(shim)) - before < 60 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)
    values = scrape(shim)
    assert embed_requests(values) - before == 60
    assert values['shim_flag_serving{"backend": "rust", "endpoint": "embed"}'] == 1
    assert values["shim_flag_generation{}"] == 0
    assert any(k.startswith("shim_request_duration_seconds_bucket") for k in values)
    assert any(
        k.startswith("shim_translations_total") and '"rust->go"' not in k and '"go->rust"' in k
        for k in values
    )
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus): text parsed only")
    text = httpx.get(f"{shim.admin_url}/metrics").text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_canary_percent_is_published_for_every_endpoint(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(workers=2)
    values = scrape(shim)
    assert values['shim_flag_percent{"endpoint": "embed"}'] == -1  # no canary
    # Every endpoint's rollback counter exists before its first rollback: increase() sees it.
    assert values['shim_guard_rollbacks_total{"endpoint": "embed"}'] == 0
    shim.cli("flags", "set", "embed", "rust", "--percent", "30")
    values = scrape(shim)
    assert values['shim_flag_percent{"endpoint": "embed"}'] == 30
    assert values['shim_flag_percent{"endpoint": "sql"}'] == -1
    shim.cli("flags", "set", "embed", "rust", "--percent", "0")
    assert scrape(shim)['shim_flag_percent{"endpoint": "embed"}'] == 0


def test_flag_changes_are_counted_from_the_audit_trail(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(workers=2)
    shim.cli("flags", "set", "sql", "go")
    shim.cli("rollback", "sql")
    values = scrape(shim)
    assert values['shim_flag_changes_total{"actor": "cli", "endpoint": "sql"}'] == 2


def test_a_corrupt_flag_file_is_never_served(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(workers=2)
    shim.cli("flags", "set", "embed", "go")
    (shim.state_dir / "flags.json").write_text('{"version": 1, "generation": 7, "flags": {"emb')
    import time

    time.sleep(0.8)
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        seen = {
            client.post(f"{shim.url}/ai/embed", json={"texts": ["a"]}).headers["x-shim-backend"]
            for _ in range(20)
        }
    assert seen == {"go"}
    assert httpx.get(f"{shim.admin_url}/_shim/flags").json()["generation"] == 1
    values = scrape(shim)
    assert values["shim_flag_load_errors_total{}"] >= 2  # each worker counted its own refusal
    check = shim.cli("check", check=False)
    assert check.returncode == 1 and "flag file" in check.stderr


def test_readyz_names_the_backend_that_is_down(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(go_url=f"http://127.0.0.1:{free_port()}")
    response = httpx.get(f"{shim.admin_url}/_shim/readyz")
    assert response.status_code == 503
    backends = response.json()["backends"]
    assert backends["rust"]["reachable"] is True and backends["go"]["reachable"] is False
    assert "SHIM_GO_URL" in backends["go"]["error"]


def test_tallied_latencies_publish_exactly_what_observe_would() -> None:
    """The bulk path uses prometheus_client internals: this fails if they change."""
    seconds = [0.0, 0.0004, 0.001, 0.0011, 0.0025, 0.3, 2.5, 29.0, 31.0, 120.0] * 3
    tally = RequestTally()
    for value in seconds:
        tally.observe("embed", "rust", "go", 200, value)
    cell = tally.latency[("embed", "go")]
    direct, bulk = CollectorRegistry(), CollectorRegistry()
    one = Histogram("t_seconds", "t", ["endpoint"], buckets=LATENCY_BUCKETS, registry=direct)
    two = Histogram("t_seconds", "t", ["endpoint"], buckets=LATENCY_BUCKETS, registry=bulk)
    for value in seconds:
        one.labels("embed").observe(value)
    add_to_histogram(two.labels("embed"), cell[:-1], cell[-1])

    def samples(registry: CollectorRegistry) -> list[str]:
        return [
            line
            for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("t_seconds_created")
        ]

    assert samples(bulk) == samples(direct)
    assert tally.counts == {("embed", "rust", "go", "2xx"): len(seconds)}


def test_admin_input_errors_say_what_is_wrong_with_one_code_per_kind(
    start_shim: Callable[..., Shim],
) -> None:
    """Malformed input is `invalid_value`; a well-formed change the policy refuses is
    `flag_refused`; not-JSON and not-an-object are told apart; a 405 names the methods."""
    shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    url = f"{shim.admin_url}/_shim/flags/embed"

    def put(body: bytes, endpoint: str = "embed") -> httpx.Response:
        return httpx.put(f"{shim.admin_url}/_shim/flags/{endpoint}", content=body, headers=AUTH)

    not_json = put(b"serve=go")
    assert not_json.status_code == 422 and not_json.json()["error"]["code"] == "invalid_value"
    assert "not JSON" in not_json.json()["error"]["message"]
    not_object = put(b'["go"]')
    assert not_object.json()["error"]["code"] == "invalid_value"
    message = not_object.json()["error"]["message"]
    assert "JSON object, not an array" in message and "not JSON" not in message
    for malformed in (b'{"percent": 150}', b'{"percent": "10"}', b'{"serve": "java"}'):
        answer = put(malformed)
        assert (answer.status_code, answer.json()["error"]["code"]) == (422, "invalid_value")
    for refused, endpoint in (
        (b'{"serve": "rust"}', "matrix_search"),
        (b'{"shadow": true}', "chat"),
    ):
        answer = put(refused, endpoint)
        assert (answer.status_code, answer.json()["error"]["code"]) == (422, "flag_refused")
    wrong_method = httpx.post(url, headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "PUT"
    assert "(allowed: PUT)" in wrong_method.json()["error"]["message"]
    assert audit(shim) == []


def test_the_admin_root_lists_every_admin_route(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim()
    index = httpx.get(f"{shim.admin_url}/")
    assert index.status_code == 200 and index.headers["content-type"] == "application/json"
    document = index.json()
    routes = {route["path"]: route for route in document["routes"]}
    assert {"/_shim/flags", "/_shim/flags/{endpoint}", "/_shim/rollback", "/metrics"} <= set(routes)
    assert routes["/_shim/flags/{endpoint}"]["methods"] == ["PUT"]
    assert routes["/_shim/flags/{endpoint}"]["needs_token"] is True
    assert routes["/_shim/flags"]["needs_token"] is False
    assert all(route["what"] for route in document["routes"])
    assert "ui" in document  # the operator page's link, null until it is served
    for path, route in routes.items():  # every listed route answers its listed method
        if "GET" in route["methods"] and "{" not in path:
            assert httpx.get(f"{shim.admin_url}{path}").status_code in (200, 503), path
    missing = httpx.get(f"{shim.admin_url}/nowhere")
    assert missing.status_code == 404 and "GET / lists" in missing.json()["error"]["message"]
