"""Every endpoint, both faces, both backends: the client face's shape, the same content."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from shim.reference.embedding import unit_embedding
from tests.flipping import ROUTES, serve_all
from tests.servers import Shim, rss_kib

PATHS = {
    "vectors_search": {"rust": "/vectors/search", "go": "/v1/vectors/search"},
    "retrieve": {"rust": "/vectors/hybrid", "go": "/v1/matrix/retrieve"},
    "sql": {"rust": "/query", "go": "/v1/sql"},
    "chat": {"rust": "/ai/chat", "go": "/v1/chat"},
}
VECTOR = unit_embedding("forklift operator night shift", "nomic-embed-text").tolist()
STATEMENT = "select id, role, years, rate from workers where years > 10 order by id limit 20"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
REQUESTS: dict[str, dict[str, dict[str, Any]]] = {
    "vectors_search": {
        "rust": {"index": "workers", "vector": VECTOR, "k": 7},
        "go": {"index": "workers", "vector": VECTOR, "top_k": 7},
    },
    "retrieve": {
        "rust": {"query": "CNC operator weekend shift", "k": 5},
        "go": {"query": "CNC operator weekend shift", "top_k": 5},
    },
    "sql": {"rust": {"sql": STATEMENT}, "go": {"query": STATEMENT}},
    "chat": {"rust": {"messages": MESSAGES}, "go": {"messages": MESSAGES, "provider": "echo"}},
}
HITS = {"rust": ("results", "score"), "go": ("hits", "distance")}


def compare(endpoint: str, face: str, backend: str, got: httpx.Response, direct: Any) -> None:
    body = got.json()
    if endpoint in ("vectors_search", "retrieve"):
        hits_field, rank = HITS[face]
        assert set(body) == {hits_field}
        assert [h["id"] for h in body[hits_field]] == [h["id"] for h in direct[hits_field]]
        for ours, theirs in zip(body[hits_field], direct[hits_field], strict=True):
            assert set(ours) == set(theirs)
            assert ours[rank] == pytest.approx(theirs[rank], abs=1e-6)
            assert ours.get("text") == theirs.get("text")
    elif endpoint == "sql" and face == "go" and backend == "rust":
        assert body["rows"] == direct["rows"]
        assert [c["name"] for c in body["columns"]] == [c["name"] for c in direct["columns"]]
        assert {c["type"] for c in body["columns"]} == {"unknown"}
        assert got.headers["x-shim-lossy"] == "column-types"
    else:
        assert body == direct
        assert "x-shim-lossy" not in got.headers


@pytest.mark.parametrize("backend", ["rust", "go"])
def test_every_endpoint_answers_like_the_client_faces_own_backend(
    start_shim: Callable[..., Shim], backends: dict[str, str], backend: str
) -> None:
    shim = start_shim()
    if backend == "go":
        serve_all(shim, "go", list(PATHS))
    for endpoint, paths in PATHS.items():
        for face, path in paths.items():
            request = REQUESTS[endpoint][face]
            direct = httpx.post(backends[face] + path, json=request)
            assert direct.status_code == 200, direct.text
            for prefix in ("", "/_go") if face == "go" else ("",):
                got = httpx.post(shim.url + prefix + path, json=request)
                assert got.status_code == 200, (endpoint, face, got.text)
                assert got.headers["x-shim-backend"] == backend
                assert got.headers["x-shim-endpoint"] == endpoint
                compare(endpoint, face, backend, got, direct.json())


def test_learning_loop_through_the_shim_halves_only_the_recorded_role(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim()
    search = f"{shim.url}/_go/v1/matrix/search"
    forklift = {"query": "forklift operator", "role": "Forklift Operator", "top_k": 3}
    cnc = {"query": "CNC operator", "role": "CNC Operator", "top_k": 3}
    cold = httpx.post(search, json=forklift).json()["hits"]
    cnc_before = httpx.post(search, json=cnc).json()["hits"]
    assert all(hit["role"] == "Forklift Operator" for hit in cold)
    top = cold[0]
    record = {
        "query": forklift["query"],
        "id": top["id"],
        "role": "Forklift Operator",
        "score": 1.0,
    }
    recorded = httpx.post(f"{shim.url}/v1/matrix/playbooks/record", json=record)
    assert recorded.status_code == 200 and recorded.json() == {"recorded": True}
    assert recorded.headers["x-shim-backend"] == "go"
    warm = {h["id"]: h["distance"] for h in httpx.post(search, json=forklift).json()["hits"]}
    assert warm[top["id"]] == pytest.approx(top["distance"] / 2, abs=1e-4)
    assert httpx.post(search, json=cnc).json()["hits"] == cnc_before


def test_go_only_endpoints_cannot_be_flipped_to_rust(start_shim: Callable[..., Shim]) -> None:
    shim = start_shim()
    for endpoint in ("matrix_search", "playbooks_record"):
        refused = shim.cli("flags", "set", endpoint, "rust", check=False)
        assert refused.returncode == 1 and "Go-only" in refused.stderr


class RssSampler:
    """The highest RSS of a process, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


MiB = 1024 * 1024


def object_chunks(size_mib: int) -> Iterator[bytes]:
    """Deterministic, non-repeating 1 MiB blocks (so a misplaced block would be noticed)."""
    base = np.random.default_rng(7).integers(0, 256, MiB, dtype=np.uint8).tobytes()
    for index in range(size_mib):
        yield index.to_bytes(8, "little") + base[8:]


def test_storage_streams_256_mib_across_dialects_with_bounded_memory(
    start_shim: Callable[..., Shim],
) -> None:
    shim = start_shim()
    assert shim.server.process is not None
    size_mib = 256
    want = hashlib.md5(usedforsecurity=False)
    for chunk in object_chunks(size_mib):
        want.update(chunk)
    url = f"{shim.url}/_go/v1/storage/blobs/big.bin"  # Go face, served by Rust: path rewritten
    baseline = rss_kib(shim.server.process.pid)
    with RssSampler(shim.server.process.pid) as sampler:
        put = httpx.put(
            url,
            content=object_chunks(size_mib),
            timeout=120,
            headers={"content-type": "application/x-blob", "content-length": str(size_mib * MiB)},
        )
        assert put.status_code == 201, put.text
        assert put.headers["etag"] == f'"{want.hexdigest()}"'
        got = hashlib.md5(usedforsecurity=False)
        with httpx.stream("GET", f"{shim.url}/storage/blobs/big.bin", timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(size_mib * MiB)
            assert response.headers["content-type"] == "application/x-blob"
            assert response.headers["etag"] == put.headers["etag"]
            for chunk in response.iter_raw():
                got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
    growth_mib = (sampler.peak - baseline) / 1024
    print(f"shim RSS: baseline {baseline / 1024:.0f} MiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 100, f"shim RSS grew by {growth_mib:.0f} MiB"

    block = next(object_chunks(1))
    ranged = httpx.get(url, headers={"range": "bytes=1000-1999"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 1000-1999/{size_mib * MiB}"
    assert ranged.content == block[1000:2000]
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(size_mib * MiB)
    assert httpx.delete(url).status_code == 204
    missing = httpx.get(url)
    assert missing.status_code == 404 and missing.headers["x-shim-backend"] == "rust"


@pytest.fixture
def shim_on_echo_go(start_shim: Callable[..., Shim], echo_backend: str) -> Iterator[Shim]:
    shim = start_shim(go_url=echo_backend)
    serve_all(shim, "go", ["embed"])
    yield shim


def answer_from_backend(shim: Shim, body: str) -> httpx.Response:
    return httpx.post(f"{shim.url}/ai/embed", json={"texts": ["a"]}, headers={"x-test-body": body})


def test_missing_field_from_backend_is_a_502_naming_it(shim_on_echo_go: Shim) -> None:
    response = answer_from_backend(shim_on_echo_go, '{"vectors": [[1.0, 0.0]], "model": "m"}')
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_answer"
    assert "dimension" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "bad",
    [
        '{"vectors": [[NaN]], "dimension": 1, "model": "m"}',
        '{"vectors": [[1e999]], "dimension": 1, "model": "m"}',
        '{"vectors": [[1.0]], "dimension": 1, "model": "m"',
        '{"vectors": [[1.0, "x"]], "dimension": 2, "model": "m"}',
    ],
)
def test_non_finite_or_broken_backend_answer_is_a_502(shim_on_echo_go: Shim, bad: str) -> None:
    response = answer_from_backend(shim_on_echo_go, bad)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_answer"


def test_unknown_fields_from_backend_pass_through(shim_on_echo_go: Shim) -> None:
    response = answer_from_backend(
        shim_on_echo_go, '{"vectors": [[3.0, 4.0]], "dimension": 2, "model": "m", "took_ms": 5}'
    )
    assert response.status_code == 200
    assert response.json() == {
        "embeddings": [[0.6, 0.8]],
        "dimensions": 2,
        "model": "m",
        "took_ms": 5,
    }


def test_backend_error_status_is_passed_on_untranslated(shim_on_echo_go: Shim) -> None:
    response = httpx.post(
        f"{shim_on_echo_go.url}/ai/embed",
        json={"texts": ["a"]},
        headers={"x-test-body": '{"error": "model busy"}', "x-test-status": "429"},
    )
    assert response.status_code == 429  # not 502/503/504: no fallback, passed on as it is
    assert response.json() == {"error": "model busy"}
    assert response.headers["x-shim-backend"] == "go"


def test_check_explain_lists_every_endpoint_and_its_losses(start_shim: Callable[..., Shim]) -> None:
    output = start_shim().cli("check", "--explain").stdout
    for endpoint in ROUTES.routes:  # the table the command explains
        assert f"\n{endpoint}  (" in output
    assert "X-Shim-Lossy: magnitude" in output and "X-Shim-Lossy: column-types" in output
    assert output.count("never sent to rust") == 2
