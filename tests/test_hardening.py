"""Hostile input, failing backends, overload: each test named for the attack it makes harmless.

Raw sockets where an HTTP client would fix the bytes for us.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, Server, Shim, base_env, free_port, reference, rss_kib


def raw(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    """Send these exact bytes; read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into (status, headers, body) answers (length-framed or chunked)."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode().lower()] = value.decode().strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
        else:
            length = int(headers.get("content-length", "0"))
            body, rest = rest[:length], rest[length:]
        answers.append((status, headers, body))
        data = rest
    return answers


def received_by(echo: str, tag: str) -> list[dict[str, object]]:
    return [r for r in httpx.get(f"{echo}/__received").json() if r["request_id"] == tag]


@pytest.fixture
def shim_on_echo(start_shim: Callable[..., Shim], echo_backend: str) -> Shim:
    return start_shim(rust_url=echo_backend, go_url=echo_backend)


# -- framing and smuggling -----------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
    ],
    ids=["content-length-with-chunked", "two-content-lengths"],
)
def test_smuggling_framing_is_refused_as_json_and_reaches_no_backend(
    shim_on_echo: Shim, echo_backend: str, framing: bytes
) -> None:
    tag = f"smuggle-{time.time_ns()}"
    answer = raw(
        shim_on_echo.port,
        b"POST /ai/embed HTTP/1.1\r\nHost: shim\r\nX-Request-ID: "
        + tag.encode()
        + b"\r\n"
        + framing
        + b"GET /ai/embed HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    [(status, headers, body)] = responses(answer)  # one answer: the smuggled request never ran
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert received_by(echo_backend, tag) == []


def test_pipelined_requests_are_answered_once_each_in_order(shim_on_echo: Shim) -> None:
    pipeline = (
        b"".join(
            f"POST /ai/embed HTTP/1.1\r\nHost: shim\r\nX-Request-ID: p{i}\r\n"
            f"Content-Length: 2\r\n\r\n{{}}".encode()
            for i in range(3)
        )
        + b"GET /nowhere HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n"
    )
    answers = responses(raw(shim_on_echo.port, pipeline))
    assert [a[0] for a in answers] == [200, 200, 200, 404]
    assert [a[1]["x-request-id"] for a in answers[:3]] == ["p0", "p1", "p2"]


# -- header hygiene ------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["no-host", "two-hosts"])
def test_missing_or_repeated_host_is_refused(shim_on_echo: Shim, hosts: bytes) -> None:
    answer = raw(
        shim_on_echo.port, b"POST /ai/embed HTTP/1.1\r\n" + hosts + b"Content-Length: 2\r\n\r\n{}"
    )
    [(status, headers, body)] = responses(answer)
    assert status == 400 and "Host" in json.loads(body)["error"]["message"]
    assert headers["connection"] == "close"


def test_an_oversized_header_section_is_refused_with_431(shim_on_echo: Shim) -> None:
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
    answer = raw(shim_on_echo.port, b"GET /storage/k HTTP/1.1\r\nHost: shim\r\n" + big + b"\r\n")
    [(status, _, body)] = responses(answer)
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"


# -- path tricks and open-proxy attempts --------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/storage/../ai/embed",
        "/storage/%2e%2e/ai/embed",
        "/storage/a%2Fb",
        "/storage/a%5cb",
        "/storage/a\\b",
        "/storage/a%00b",
        "/_go/v1/storage/./x",
        "/_go/%2E%2e/_shim/flags",
    ],
)
def test_path_tricks_are_refused_before_routing(
    shim_on_echo: Shim, echo_backend: str, path: str
) -> None:
    tag = f"path-{time.time_ns()}"
    answer = raw(
        shim_on_echo.port,
        f"GET {path} HTTP/1.1\r\nHost: shim\r\nX-Request-ID: {tag}"
        "\r\nConnection: close\r\n\r\n".encode(),
    )
    [(status, _, body)] = responses(answer)
    assert status == 400, path
    assert "path" in json.loads(body)["error"]["message"]
    assert received_by(echo_backend, tag) == []


def test_absolute_form_and_a_foreign_host_never_choose_the_upstream(
    shim_on_echo: Shim, echo_backend: str
) -> None:
    request = (
        b"POST http://evil.example:9/ai/embed HTTP/1.1\r\nHost: evil.example\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    [(status, _, body)] = responses(raw(shim_on_echo.port, request))
    assert status == 200  # served from the route table, by the configured backend
    echo = json.loads(body)
    sent = dict(echo["headers"])
    assert echo["path"] == "/ai/embed"
    assert sent["host"] == echo_backend.removeprefix("http://")


# -- JSON that cannot hurt ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"texts": [' + b"[" * 2000 + b"]" * 2000 + b"]}", 400),
        (b'{"texts": ["a"], "n": 123456789012345678901234567890}', 400),
        (b'{"texts": ["\\ud800"]}', 400),
        (b'{"texts": [Infinity]}', 400),
    ],
    ids=["deep-nesting", "huge-integer", "lone-surrogate", "infinity"],
)
def test_hostile_json_is_a_400_naming_the_problem(
    start_shim: Callable[..., Shim], body: bytes, status: int
) -> None:
    shim = start_shim()
    response = httpx.post(f"{shim.url}/v1/embed", content=body)  # Go face, Rust serves: parsed
    assert response.status_code == status
    assert response.json()["error"]["code"] == "bad_json"


def test_a_zero_vector_from_a_backend_stays_zero(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(go_url=echo_backend)
    shim.cli("flags", "set", "embed", "go")
    response = httpx.post(
        f"{shim.url}/ai/embed",
        json={"texts": ["a"]},
        headers={
            "x-test-body": '{"vectors": [[0.0, 0.0], [3.0, 4.0]], "dimension": 2, "model": "m"}'
        },
    )
    assert response.json()["embeddings"] == [[0.0, 0.0], [0.6, 0.8]]


# -- backends that fail ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("faulty")
    server = Server(
        [sys.executable, str(ROOT / "tests" / "backends" / "raw_faulty.py"), str(port)],
        ready_url=f"http://127.0.0.1:{port}/health",
        env=base_env(),
        log=tmp / "faulty.log",
        cwd=ROOT,
    )
    yield server.start() and f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("reset", "backend_unreachable"),
        ("garbage", "bad_backend_answer"),
        ("truncate", "bad_backend_answer"),
        ("hang", "backend_timeout"),
    ],
)
def test_a_misbehaving_backend_is_a_bounded_json_error(
    start_shim: Callable[..., Shim], faulty_backend: str, fault: str, code: str
) -> None:
    shim = start_shim(rust_url=faulty_backend, go_url=faulty_backend, SHIM_READ_TIMEOUT="0.5")
    started = time.monotonic()
    response = httpx.post(
        f"{shim.url}/v1/embed",
        json={"texts": ["a"]},  # rewritten: buffered
        headers={"X-Test-Fault": fault},
        timeout=10,
    )
    assert time.monotonic() - started < 2.0
    assert response.status_code in (502, 504)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code, response.text
    # the worker survived: an ordinary request still works
    assert httpx.post(f"{shim.url}/v1/embed", json={"texts": ["a"]}).status_code in (200, 502)


# -- slow clients --------------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_off_at_the_deadline(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim(SHIM_HEADER_TIMEOUT="1")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", shim.port), timeout=5) as sock:
        sock.sendall(b"GET /storage/k HTTP/1.1\r\nHost: shim\r\n")
        try:
            for _ in range(10):
                time.sleep(0.3)
                sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass  # the shim closed the connection on us: that is the point
        answer = sock.recv(65536)
    assert time.monotonic() - started < 2.5
    assert b" 408 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer


def test_an_idle_connection_that_never_speaks_is_closed(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim(SHIM_HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", shim.port), timeout=5) as sock:
        started = time.monotonic()
        answer = sock.recv(65536)
    assert time.monotonic() - started < 2.0 and b"408" in answer


# -- client aborts, pools, overload --------------------------------------------------------


def close_wait_sockets(ports: set[int]) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            ends = {int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)}
            if state == "08" and ends & ports:
                count += 1
    return count


def test_a_thousand_client_aborts_mid_stream_leak_nothing(
    start_shim: Callable[..., Shim], echo_backend: str
) -> None:
    shim = start_shim(rust_url=echo_backend)
    assert shim.server.process is not None
    request = (
        b"POST /ai/embed HTTP/1.1\r\nHost: shim\r\nX-Test-Mode: slow-body\r\n"
        b"X-Test-Delay: 0.5\r\nContent-Length: 2\r\n\r\n{}"
    )

    def abort(_: int) -> None:
        with socket.create_connection(("127.0.0.1", shim.port), timeout=5) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # first bytes are streaming
        # closed mid-body: the shim must drop the upstream exchange

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(abort, range(100)))  # warm-up, then measure
    before = rss_kib(shim.server.process.pid)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(abort, range(1000)))
    echo_port = int(echo_backend.rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while close_wait_sockets({shim.port, echo_port}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert close_wait_sockets({shim.port, echo_port}) == 0
    with httpx.Client(timeout=5) as client:
        statuses = [
            client.post(f"{shim.url}/ai/embed", json={"texts": [str(i)]}).status_code
            for i in range(100)
        ]
    assert statuses == [200] * 100
    after = rss_kib(shim.server.process.pid)
    assert after <= before * 1.10, (before, after)


def test_past_the_in_flight_limit_excess_requests_wait_their_budget_then_get_a_503(
    start_shim: Callable[..., Shim], tmp_path: Path
) -> None:
    slow, slow_url = reference("rust", tmp_path, latency_ms=800)
    try:
        shim = start_shim(
            rust_url=slow_url, SHIM_MAX_CONNECTIONS_PER_BACKEND="4", SHIM_QUEUE_TIMEOUT="0.3"
        )
        barrier = threading.Barrier(8)
        clients = [httpx.Client(timeout=10) for _ in range(8)]
        for client in clients:  # connections open before the burst: time the shim, not TCP
            assert client.get(f"{shim.url}/_shim/healthz").status_code == 200

        def call(i: int) -> tuple[int, float, str | None]:
            barrier.wait()
            started = time.monotonic()
            response = clients[i].post(
                f"{shim.url}/ai/chat", json={"messages": [{"role": "user", "content": str(i)}]}
            )
            return (
                response.status_code,
                time.monotonic() - started,
                response.headers.get("retry-after"),
            )

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        admitted = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        assert len(admitted) == 4 and len(shed) == 4, results
        # Shed when their 0.3 s wait was spent: not at once, not when a slot came free (0.8 s).
        assert all(0.25 < seconds < 0.75 for _, seconds, _ in shed), shed
        assert all(retry == "1" for _, _, retry in shed)
        for client in clients:
            client.close()
    finally:
        slow.stop()
