"""How soon the operator page shows a flag change, with its short polling.

A real `shim serve` (reference backends, 2 workers) and the page open in Debian's Chromium;
`--flips` times the flag store flips `sql` between rust and go and the script measures, in
the browser, how long until the row's `data-serve` shows it. What it includes: a worker
noticing the file (SHIM_FLAG_POLL_SECONDS, 0.2 s), the page's next poll (1 s), one render.

    .venv/bin/python benchmarks/ui_live.py [--flips 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.cutover.file_store import FileBackend  # noqa: E402
from shim.cutover.flags import FlagStore  # noqa: E402
from shim.route_config import load_routes  # noqa: E402
from tests.servers import Shim, reference  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=10)
    flips = parser.parse_args().flips
    tmp = Path(tempfile.mkdtemp(prefix="shim-ui-live-"))
    rust, rust_url = reference("rust", tmp)
    go, go_url = reference("go", tmp)
    shim = Shim(tmp, rust_url=rust_url, go_url=go_url, workers=2).start()
    routes = load_routes(ROOT / "config" / "routes.toml")
    store = FlagStore(FileBackend(shim.state_dir, routes), routes, {})
    seen = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{shim.admin_url}/_shim/ui")
            for i in range(flips):
                backend = "go" if i % 2 == 0 else "rust"
                time.sleep(0.37)  # not in step with the page's polls
                store.set("sql", serve=backend, actor="bench")
                flipped = time.monotonic()
                page.wait_for_selector(
                    f'tr[data-endpoint="sql"][data-serve="{backend}"]', timeout=5000
                )
                seen.append(time.monotonic() - flipped)
            browser.close()
    finally:
        for server in (shim.server, rust, go):
            server.stop()
    print(
        f"{flips} flips: shown after min {min(seen):.2f} s, median "
        f"{statistics.median(seen):.2f} s, max {max(seen):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
