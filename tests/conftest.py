from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import ETCD, EtcdServer, Shim, own_backend, reference


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The reference Rust and Go backends, shared by the whole session."""
    tmp = tmp_path_factory.mktemp("backends")
    rust, rust_url = reference("rust", tmp)
    go, go_url = reference("go", tmp)
    yield {"rust": rust_url, "go": go_url}
    rust.stop()
    go.stop()


@pytest.fixture(scope="session")
def echo_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = own_backend(tmp_path_factory.mktemp("echo"))
    yield url
    server.stop()


def wrapped_go(tmp: Path, module: str) -> Iterator[str]:
    """One of tests/backends/' Go wrappers in front of a reference Go backend of its own."""
    go, go_url = reference("go", tmp)
    server, url = own_backend(tmp, module, UPSTREAM=go_url)
    yield url
    server.stop()
    go.stop()


@pytest.fixture(scope="module")
def drifting_go(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Go that bends embed vectors, drops the top search hit and lowers rerank scores."""
    yield from wrapped_go(tmp_path_factory.mktemp("drift"), "drifting_go")


@pytest.fixture
def flaky_go(tmp_path: Path) -> Iterator[str]:
    """A Go failing every other request with 503 (fresh for each test: it counts)."""
    yield from wrapped_go(tmp_path, "flaky_go")


@pytest.fixture
def start_shim(tmp_path: Path, backends: dict[str, str]) -> Iterator[Callable[..., Shim]]:
    """Factory: start `shim serve` against the reference backends (or given URLs)."""
    started: list[Shim] = []

    def start(**options: object) -> Shim:
        options.setdefault("rust_url", backends["rust"])
        options.setdefault("go_url", backends["go"])
        shim = Shim(tmp_path, **options).start()  # type: ignore[arg-type]
        started.append(shim)
        return shim

    yield start
    for shim in started:
        shim.stop()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the session; each test keeps to its own prefix."""
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"{ETCD} is missing: apt-get install etcd-server (.ci/run does)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own, for tests that pause, kill or compact it."""
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"{ETCD} is missing: apt-get install etcd-server (.ci/run does)")
    server = EtcdServer(tmp_path).start()
    yield server
    server.kill()
