"""The embed cutover end to end: real reference backends, `shim serve`, the `shim` CLI."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from tests.servers import Shim

TEXTS = ["forklift operator", "CNC operator", "night shift warehouse lead"]
RUST_MODEL = "nomic-embed-text"
FACE_PATH = {"rust": "/ai/embed", "go": "/v1/embed"}
FACE_KEYS = {"rust": {"embeddings", "dimensions", "model"}, "go": {"vectors", "dimension", "model"}}
VECTORS = {"rust": "embeddings", "go": "vectors"}


def fresh_client() -> httpx.Client:
    """No keep-alive: every request opens a new connection, so they spread over workers."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


def flip(shim: Shim, endpoint: str, backend: str) -> None:
    shim.cli("flags", "set", endpoint, backend, "--reason", "test")
    wait_until_served_by(shim, endpoint="embed", backend=backend)


def wait_until_served_by(shim: Shim, *, endpoint: str, backend: str, timeout: float = 3) -> float:
    started = time.monotonic()
    with fresh_client() as client:
        while time.monotonic() - started < timeout:
            seen = {served_by(client, shim) for _ in range(8)}
            if seen == {backend}:
                return time.monotonic() - started
    raise AssertionError(f"{endpoint} not served by {backend} after {timeout} s")


def served_by(client: httpx.Client, shim: Shim) -> str:
    """Which backend answered (errors from the shim name the backend too)."""
    response = client.post(f"{shim.url}/ai/embed", json={"texts": ["x"]})
    return response.headers["x-shim-backend"]


def direct_rust(backends: dict[str, str]) -> np.ndarray:
    response = httpx.post(
        f"{backends['rust']}/ai/embed", json={"texts": TEXTS, "model": RUST_MODEL}
    )
    return np.array(response.json()["embeddings"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("backend", ["rust", "go"])
def test_every_face_gets_its_own_shape_whichever_backend_serves(
    start_shim: Callable[..., Shim], backends: dict[str, str], backend: str
) -> None:
    shim = start_shim()
    if backend == "go":
        flip(shim, "embed", "go")
    expected = direct_rust(backends)
    for face, path in [("rust", "/ai/embed"), ("go", "/v1/embed"), ("go", "/_go/v1/embed")]:
        response = httpx.post(shim.url + path, json={"texts": TEXTS, "model": RUST_MODEL})
        assert response.status_code == 200, response.text
        assert response.headers["x-shim-backend"] == backend
        assert response.headers["x-shim-endpoint"] == "embed"
        assert response.headers["x-request-id"]
        body = response.json()
        assert set(body) == FACE_KEYS[face]
        vectors = np.array(body[VECTORS[face]])
        assert vectors.shape == expected.shape
        assert cosines(vectors, expected).min() >= 0.99999
        norms = np.linalg.norm(vectors, axis=1)
        if face == "rust":
            assert np.allclose(norms, 1.0, atol=1e-6)
        elif backend == "go":
            assert norms.min() >= 20 and norms.max() <= 23  # Go face from Go: raw magnitudes
        else:
            assert response.headers["x-shim-lossy"] == "magnitude"


def test_rust_face_without_model_served_by_go_keeps_the_rust_embedding_space(
    start_shim: Callable[..., Shim], backends: dict[str, str]
) -> None:
    shim = start_shim()
    flip(shim, "embed", "go")
    response = httpx.post(f"{shim.url}/ai/embed", json={"texts": TEXTS})
    assert response.headers["x-shim-backend"] == "go"
    assert response.json()["model"] == RUST_MODEL
    assert cosines(np.array(response.json()["embeddings"]), direct_rust(backends)).min() >= 0.99999


def test_flip_reaches_every_worker_within_a_second_and_survives_restart(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(workers=4)
    assert wait_until_served_by(shim, endpoint="embed", backend="rust") < 1
    shim.cli("flags", "set", "embed", "go")
    assert wait_until_served_by(shim, endpoint="embed", backend="go") < 1.0
    workers = {}
    with fresh_client() as client:
        deadline = time.monotonic() + 10
        while len(workers) < 4 and time.monotonic() < deadline:
            document = client.get(f"{shim.admin_url}/_shim/flags").json()
            workers[document["worker"]] = document
    assert len(workers) == 4, "not every worker answered the admin listener"
    assert all(d["endpoints"]["embed"]["serve"] == "go" for d in workers.values())
    assert len({d["generation"] for d in workers.values()}) == 1

    shim.cli("rollback")
    assert wait_until_served_by(shim, endpoint="embed", backend="rust") < 1.0
    shim.cli("flags", "set", "embed", "go")
    shim.stop()
    shim.start()  # same state dir
    assert wait_until_served_by(shim, endpoint="embed", backend="go", timeout=0.5) < 0.5

    shim.stop()
    shim.server.env["SHIM_PIN__EMBED"] = shim.env["SHIM_PIN__EMBED"] = "rust"
    shim.start()
    assert wait_until_served_by(shim, endpoint="embed", backend="rust", timeout=0.5) < 0.5
    table = shim.cli("flags").stdout
    assert "SHIM_PIN__EMBED" in table and "warning: embed" in table
    refused = shim.cli("flags", "set", "embed", "go", check=False)
    assert refused.returncode == 1 and "SHIM_PIN__EMBED" in refused.stderr


def test_same_dialect_answer_is_streamed_not_buffered(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(rust_url=echo_backend)
    started = time.monotonic()
    headers = {"x-test-mode": "slow-body", "x-test-delay": "2"}
    with httpx.stream(
        "POST", f"{shim.url}/ai/embed", json={"texts": ["a"]}, headers=headers, timeout=10
    ) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    total = time.monotonic() - started
    assert first.startswith(b'{"first": true')
    assert first_at < 1.0 <= 2.0 <= total
    assert json.loads(first + rest) == {"first": True, "last": True}


def test_hop_by_hop_headers_never_reach_the_backend(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(rust_url=echo_backend)
    connection = http.client.HTTPConnection("127.0.0.1", shim.port, timeout=10)
    connection.request(
        "POST",
        "/ai/embed?q=1",
        body=b'{"texts": ["a"]}',
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "X-Request-ID": "req-123",
            "X-Kept": "yes",
        },
    )
    response = connection.getresponse()
    echo = json.loads(response.read())
    connection.close()
    sent = dict(echo["headers"])
    for name in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in sent, name
    assert "x-private-hop" not in sent.get("connection", "").lower()
    assert sent["x-kept"] == "yes" and sent["x-request-id"] == "req-123"
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["x-forwarded-proto"] == "http"
    assert "cutover-shim" in sent["via"]
    assert sent["host"].endswith(echo_backend.rsplit(":", 1)[1])  # the backend's, not ours
    assert echo["path"] == "/ai/embed" and echo["query"] == "q=1"
    assert response.getheader("x-request-id") == "req-123"


def test_the_backend_sees_the_clients_headers_and_the_proxys_own_nothing_else(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    """No User-Agent, Accept, Accept-Encoding or guessed Content-Type from the upstream
    client: a backend must not compress for a client that never asked."""
    shim = start_shim(rust_url=echo_backend)
    body = b'{"texts": ["a"]}'
    connection = http.client.HTTPConnection("127.0.0.1", shim.port, timeout=10)
    connection.putrequest("POST", "/ai/embed", skip_accept_encoding=True)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    echo = json.loads(connection.getresponse().read())
    connection.close()
    sent = sorted(name for name, _ in echo["headers"])
    assert sent == sorted(
        ["host", "content-length", "x-forwarded-for", "x-forwarded-proto", "via", "x-request-id"]
    ), sent


def test_a_forwarded_chain_gains_exactly_one_hop(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    """Behind Bun on this host: the chain it sends is extended by the peer, once."""
    shim = start_shim(rust_url=echo_backend)
    response = httpx.post(
        f"{shim.url}/ai/embed",
        json={"texts": ["a"]},
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    )
    sent = dict(response.json()["headers"])
    assert sent["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "https"


def test_hop_by_hop_headers_never_reach_the_client_and_repeats_are_kept(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(rust_url=echo_backend)
    sent_back = [
        ["Connection", "X-Backend-Hop"],
        ["X-Backend-Hop", "1"],
        ["Keep-Alive", "5"],
        ["Set-Cookie", "a=1"],
        ["Set-Cookie", "b=2"],
        ["X-Backend-Kept", "yes"],
    ]
    response = httpx.post(
        f"{shim.url}/ai/embed",
        json={"texts": ["a"]},
        headers={"X-Test-Response-Headers": json.dumps(sent_back)},
    )
    assert response.status_code == 200
    assert "x-backend-hop" not in response.headers and "keep-alive" not in response.headers
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-backend-kept"] == "yes"


def test_go_prefix_answers_like_bare_go_face(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim()
    bare = httpx.post(f"{shim.url}/v1/embed", json={"texts": TEXTS})
    prefixed = httpx.post(f"{shim.url}/_go/v1/embed", json={"texts": TEXTS})
    assert bare.status_code == prefixed.status_code == 200
    assert bare.json() == prefixed.json()
    assert bare.json()["model"] == "nomic-embed-text-v2-moe"  # the Go face's default


def test_backend_down_falls_back_on_idempotent_routes_and_is_a_502_otherwise(
    start_shim: Callable[..., Shim],
) -> None:
    from tests.servers import free_port

    shim = start_shim(rust_url=f"http://127.0.0.1:{free_port()}")
    served = httpx.post(f"{shim.url}/ai/embed", json={"texts": ["a"]})
    assert served.status_code == 200  # idempotent: retried on Go, answered in the Rust shape
    assert served.headers["x-shim-fallback"] == "rust->go"
    assert served.headers["x-shim-backend"] == "go"
    assert set(served.json()) == {"embeddings", "dimensions", "model"}
    for method, path, body in [
        ("POST", "/ai/chat", {"messages": [{"role": "u", "content": "x"}]}),
        ("PUT", "/storage/k", {"x": 1}),
    ]:
        down = httpx.request(method, shim.url + path, json=body)
        assert down.status_code == 502, path  # not idempotent: never retried elsewhere
        assert down.json()["error"]["code"] == "backend_unreachable"
        assert "SHIM_RUST_URL" in down.json()["error"]["message"]
        assert down.headers["x-shim-backend"] == "rust"
        assert "x-shim-fallback" not in down.headers


def test_slow_backends_are_a_504_within_the_timeouts(
    start_shim: Callable[..., Shim], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.servers import reference

    tmp = tmp_path_factory.mktemp("slow")
    slow_rust, rust_url = reference("rust", tmp, latency_ms=3000)
    slow_go, go_url = reference("go", tmp, latency_ms=3000)
    try:
        shim = start_shim(rust_url=rust_url, go_url=go_url, SHIM_READ_TIMEOUT="0.5")
        started = time.monotonic()
        response = httpx.post(f"{shim.url}/ai/embed", json={"texts": ["a"]}, timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < 1.6  # 0.5 s on Rust, then 0.5 s on the Go fallback
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "backend_timeout"
        assert response.headers["x-shim-fallback"] == "rust->go"
        assert response.headers["x-shim-backend"] == "go"
    finally:
        slow_rust.stop()
        slow_go.stop()
