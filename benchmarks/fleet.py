"""Fleet measurements (issue 15): flip-to-served latency across instances, request
throughput with the etcd store against the file store, catch-up after etcd returns.

    .venv/bin/python benchmarks/fleet.py [--flips 50] [--seconds 8]

Starts its own etcd, reference backends and shim instances on loopback ports (the tests'
helpers), and `wrk` for the throughput part. Numbers from a shared machine: compare the
ratios within one run.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim.cutover.etcd import Etcd, kv_value
from shim.cutover.etcd_store import EtcdBackend
from shim.cutover.flags import FlagStore
from shim.route_config import load_routes
from shim.settings import PROJECT_ROOT
from tests.servers import EtcdServer, Shim, reference

ROUTES = load_routes(PROJECT_ROOT / "config" / "routes.toml")
LUA = 'wrk.method = "POST"\nwrk.body = \'{"texts": ["hello"]}\'\n'


def flip_latency(tmp: Path, urls: dict[str, str], flips: int) -> list[float]:
    """Commit `flips` flips straight into etcd; for each, the time until every worker of 3
    instances x 2 workers serves it (each worker's status says when it applied)."""
    etcd = EtcdServer(tmp).start()
    prefix = "/bench/"
    fleet = []
    try:
        for n in range(3):
            (tmp / f"i{n}").mkdir()
            fleet.append(
                Shim(tmp / f"i{n}", rust_url=urls["rust"], go_url=urls["go"], workers=2,
                     **etcd.env(prefix)).start()
            )  # fmt: skip
        client = Etcd([etcd.url])
        store = FlagStore(EtcdBackend(client, prefix, ROUTES, tmp), ROUTES, {})
        worst: list[float] = []
        for i in range(flips):
            start = time.time()
            change = store.set("embed", serve="go" if i % 2 == 0 else "rust", actor="bench")
            assert change is not None
            applied: dict[int, float] = {}
            deadline = time.monotonic() + 5
            while len(applied) < 6 and time.monotonic() < deadline:
                for kv in client.get_prefix(f"{prefix}workers/"):
                    status = orjson.loads(kv_value(kv))
                    if status["generation"] >= change.generation:
                        applied.setdefault(status["pid"], status["applied_at"])
                time.sleep(0.005)
            assert len(applied) == 6, f"flip {i}: only {len(applied)} workers applied"
            worst.append(max(applied.values()) - start)
            if worst[-1] > 0.5:
                print(f"flip {i}: slowest worker {worst[-1]:.3f} s", file=sys.stderr)
            time.sleep(0.1)
        client.close()
        return worst
    finally:
        for shim in fleet:
            shim.stop()
        etcd.stop()


def throughput(tmp: Path, urls: dict[str, str], seconds: float, store: str) -> float:
    env = {}
    etcd = None
    if store == "etcd":
        etcd = EtcdServer(tmp).start()
        env = etcd.env("/throughput/")
    (tmp / store).mkdir(exist_ok=True)
    shim = Shim(tmp / store, rust_url=urls["rust"], go_url=urls["go"], workers=2, **env).start()
    script = tmp / "post.lua"
    script.write_text(LUA)
    try:
        out = subprocess.run(
            ["wrk", "-t2", "-c32", f"-d{seconds:g}s", "-s", str(script), f"{shim.url}/ai/embed"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        assert match, out
        return float(match.group(1))
    finally:
        shim.stop()
        if etcd is not None:
            etcd.stop()


def catch_up(tmp: Path, urls: dict[str, str]) -> float:
    """etcd killed and started again: seconds from its first answer until every worker of
    2 instances serves a flip committed at that moment."""
    etcd = EtcdServer(tmp).start()
    prefix = "/catchup/"
    fleet = []
    try:
        for n in range(2):
            (tmp / f"c{n}").mkdir()
            fleet.append(
                Shim(tmp / f"c{n}", rust_url=urls["rust"], go_url=urls["go"], workers=2,
                     **etcd.env(prefix)).start()
            )  # fmt: skip
        time.sleep(1)
        etcd.signal(signal.SIGSTOP)
        time.sleep(3)  # the instances notice: readyz stale
        etcd.kill()
        etcd.start()
        start = time.time()
        client = Etcd([etcd.url])
        store = FlagStore(EtcdBackend(client, prefix, ROUTES, tmp), ROUTES, {})
        change = store.set("embed", serve="go", actor="bench")
        assert change is not None
        applied: dict[int, float] = {}
        deadline = time.monotonic() + 30
        while len(applied) < 4 and time.monotonic() < deadline:
            for kv in client.get_prefix(f"{prefix}workers/"):
                status = orjson.loads(kv_value(kv))
                if status["generation"] >= change.generation:
                    applied.setdefault(status["pid"], status["applied_at"])
            time.sleep(0.01)
        client.close()
        assert len(applied) == 4, applied
        return max(applied.values()) - start
    finally:
        for shim in fleet:
            shim.stop()
        etcd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--flips-only", action="store_true", help="skip throughput, catch-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        rust, rust_url = reference("rust", tmp)
        go, go_url = reference("go", tmp)
        urls = {"rust": rust_url, "go": go_url}
        try:
            (tmp / "flips").mkdir()
            worst = flip_latency(tmp / "flips", urls, args.flips)
            ordered = sorted(worst)
            print(
                f"flip-to-served, 3 instances x 2 workers, {len(worst)} flips: median "
                f"{statistics.median(worst) * 1000:.1f} ms, p90 "
                f"{ordered[int(0.9 * len(ordered))] * 1000:.1f} ms, max {max(worst) * 1000:.1f} ms"
            )
            if args.flips_only:
                return 0
            rates: dict[str, list[float]] = {"file": [], "etcd": []}
            for round_ in range(2):
                for store in ("file", "etcd"):
                    where = tmp / f"tp-{store}-{round_}"
                    where.mkdir()
                    rates[store].append(throughput(where, urls, args.seconds, store))
            for store, values in rates.items():
                print(f"throughput {store}: " + ", ".join(f"{v:.0f}" for v in values) + " req/s")
            ratio = statistics.mean(rates["etcd"]) / statistics.mean(rates["file"])
            print(f"etcd/file throughput ratio: {ratio:.3f}")
            (tmp / "catch").mkdir()
            print(f"catch-up after etcd returns: {catch_up(tmp / 'catch', urls):.2f} s")
        finally:
            rust.stop()
            go.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
