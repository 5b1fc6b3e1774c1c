"""Flip flags for a running test shim directly through the flag store, and wait for it."""

from __future__ import annotations

import time

import httpx

from shim.flags import FlagStore
from shim.routes import load_routes
from tests.servers import ROOT, Shim

ROUTES = load_routes(ROOT / "config" / "routes.toml")


def serve_all(shim: Shim, backend: str, endpoints: list[str]) -> None:
    """Route `endpoints` to `backend` and return once the shim serves that generation."""
    store = FlagStore(shim.state_dir, ROUTES, {})
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
