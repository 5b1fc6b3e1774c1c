"""Screenshots of the operator page in three states, for the README (`make screenshots`).

Starts the reference backends, a drifting Go backend (tests/backends/drifting_go.py) and two
real `shim serve`s on loopback, drives them as an operator would (CLI flips, shadow traffic)
and photographs `GET /_shim/ui` with Playwright and Debian's Chromium (/usr/bin/chromium):

1. all-rust.png       every endpoint on Rust, some traffic;
2. embed-shadow-pass.png  embed shadowing, PASS, its evidence open;
3. canary-30-fail.png retrieve on a 30% canary (after its own PASS), vectors_search FAILing
                      against the drifting Go backend, its evidence open.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.reference.embedding import unit_embedding  # noqa: E402
from tests.servers import Shim, own_backend, reference  # noqa: E402

OUT = ROOT / "docs" / "operator-page"
VECTOR = unit_embedding("forklift operator night shift", "nomic-embed-text").tolist()


TOKEN = "screenshots"


def traffic(shim: Shim, rounds: int) -> None:
    """Requests from `rounds` callers (X-Shim-Key): a canary is sticky per caller."""
    with httpx.Client(base_url=shim.url) as client:
        for i in range(rounds):
            caller = {"x-shim-key": f"caller-{i}"}
            client.post("/ai/embed", json={"texts": [f"screenshot {i}"]}, headers=caller)
            search = {"index": "workers", "vector": VECTOR, "k": 5}
            client.post("/vectors/search", json=search, headers=caller)
            hybrid = {"query": f"night shift {i}", "k": 5}
            client.post("/vectors/hybrid", json=hybrid, headers=caller)
            client.post("/query", json={"sql": "SELECT 1"}, headers=caller)


def log_in(page: object, shim: Shim) -> None:
    page.goto(f"{shim.admin_url}/_shim/ui/login")  # type: ignore[attr-defined]
    page.fill("input[name=token]", TOKEN)  # type: ignore[attr-defined]
    page.fill("input[name=who]", "alice")  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{shim.admin_url}/_shim/ui")  # type: ignore[attr-defined]


def wait_samples(shim: Shim, endpoint: str, samples: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = httpx.get(f"{shim.admin_url}/_shim/parity").json()["endpoints"][endpoint]
        if found["samples"] >= samples:
            return
        time.sleep(0.2)
    raise SystemExit(f"{endpoint}: not {samples} parity samples in 20 s")


def shoot(page: object, url: str, name: str) -> None:
    page.goto(url)  # type: ignore[attr-defined]
    page.wait_for_timeout(2500)  # type: ignore[attr-defined]  # two polls: the split window
    page.screenshot(path=str(OUT / name), full_page=True)  # type: ignore[attr-defined]
    print(f"wrote {OUT / name}")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="shim-screenshots-"))
    rust, rust_url = reference("rust", tmp)
    go, go_url = reference("go", tmp)
    drifting, drifting_url = own_backend(tmp, "drifting_go", UPSTREAM=go_url)
    servers = [rust, go, drifting]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            (tmp / "a").mkdir()
            shim = Shim(
                tmp / "a",
                rust_url=rust_url,
                go_url=go_url,
                workers=2,
                SHIM_PARITY_GATE="true",
                SHIM_ADMIN_TOKEN=TOKEN,
            ).start()
            servers.append(shim.server)
            traffic(shim, 10)
            shoot(page, f"{shim.admin_url}/_shim/ui", "all-rust.png")
            log_in(page, shim)
            shim.cli("flags", "set", "embed", "rust", "--shadow", "--reason", "gather evidence")
            traffic(shim, 25)
            wait_samples(shim, "embed", 20)
            shoot(page, f"{shim.admin_url}/_shim/ui?endpoint=embed", "embed-shadow-pass.png")
            shim.stop()

            (tmp / "b").mkdir()
            shim = Shim(
                tmp / "b",
                rust_url=rust_url,
                go_url=drifting_url,
                workers=2,
                SHIM_PARITY_GATE="true",
                SHIM_ADMIN_TOKEN=TOKEN,
            ).start()
            servers.append(shim.server)
            log_in(page, shim)
            shim.cli("flags", "set", "retrieve", "rust", "--shadow", "--reason", "evidence")
            shim.cli("flags", "set", "vectors_search", "rust", "--shadow", "--reason", "evidence")
            traffic(shim, 22)
            wait_samples(shim, "retrieve", 20)
            wait_samples(shim, "vectors_search", 20)
            shim.cli(
                "flags", "set", "retrieve", "rust", "--percent", "30", "--reason", "canary step 1"
            )
            traffic(shim, 60)
            url = f"{shim.admin_url}/_shim/ui?endpoint=vectors_search"
            shoot(page, url, "canary-30-fail.png")
            browser.close()
    finally:
        for server in reversed(servers):
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
