"""Drive a running test shim's flags and wait for what follows: workers applying a
generation, shadow comparisons arriving."""

from __future__ import annotations

import time
from typing import Any

import httpx

from shim.cutover.file_store import FileBackend
from shim.cutover.flags import FlagStore
from shim.route_config import load_routes
from tests.servers import ROOT, Shim

ROUTES = load_routes(ROOT / "config" / "routes.toml")


def serve_all(shim: Shim, backend: str, endpoints: list[str]) -> None:
    """Route `endpoints` to `backend` and return once the shim serves that generation."""
    store = FlagStore(FileBackend(shim.state_dir, ROUTES), ROUTES, {})
    for endpoint in endpoints:
        store.set(endpoint, serve=backend, actor="test")  # type: ignore[arg-type]
    wait_for_generation(shim, store.read().generation)


def wait_for_generation(shim: Shim, generation: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{shim.admin_url}/_shim/flags").json()["generation"] >= generation:
            return
        time.sleep(0.05)
    raise AssertionError(f"generation {generation} not applied in {timeout} s")


def wait_for_parity(
    shim: Shim, endpoint: str, *, samples: int, timeout: float = 10
) -> dict[str, Any]:
    """The endpoint's verdict once `samples` comparisons are in (shadows run in background)."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = httpx.get(f"{shim.admin_url}/_shim/parity").json()["endpoints"][endpoint]
        if verdict["samples"] >= samples or time.monotonic() > deadline:
            return verdict
        time.sleep(0.1)
