"""The scenarios: what each one starts (stub, reference backends, shims, comparison proxies)
and the targets it loads. `Bench.<scenario>()` starts its processes and returns its targets;
processes shared by several scenarios (the reference backends) are started once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from benchmarks.load import Target
from benchmarks.processes import Stack, free_port, nginx_binary, tree
from shim.settings import Settings

BURSTS = ("burst", "overload")  # N requests at once, not a timed run
SCENARIOS = ("small", "embed", "storage", "shadow", "jq", *BURSTS)
EMBED_BATCHES = (1, 64, 256)  # besides 8, the batch sizes of the embed series (--embed-batches)


def embed_body(texts: int) -> str:
    """An embed request of `texts` texts (768 dimensions each in the answer)."""
    return json.dumps(
        {"texts": [f"forklift operator {i}" for i in range(texts)], "model": "nomic-embed-text"}
    )


EMBED_8 = embed_body(8)
SMALL = json.dumps({"sql": "select 1"})
STORAGE_BYTES = 64 * 1024 * 1024
STORAGE_CONNECTIONS = 4
SLOW_MS = 500  # the overload scenario's backend: every answer takes this long
CEILING: int = Settings.model_fields["max_connections_per_backend"].default  # the shim's
FLOOR = "floor (raw ASGI + aiohttp)"
RECIPE = "starlette + httpx"


class Bench:
    """Starts what the chosen scenarios need and knows their targets. Scenarios may be built
    from several threads at once (`runner.bench` does): the shared reference backends are
    started under a lock."""

    def __init__(
        self,
        stack: Stack,
        connections: int,
        shadow_rate: float,
        embed_batches: tuple[int, ...] = EMBED_BATCHES,
        *,
        burst_size: int = 2000,
        overload_size: int = 4000,
    ) -> None:
        self.stack = stack
        self.burst_size = burst_size
        self.overload_size = overload_size
        self.connections = connections
        self.shadow_rate = shadow_rate
        self.embed_batches = embed_batches
        self.python = [sys.executable, "-m", "shim"]
        self._reference: dict[str, str] = {}
        self._reference_lock = threading.Lock()

    def reference(self, backend: str) -> str:
        with self._reference_lock:
            if backend not in self._reference:
                port = free_port()
                self.stack.start(
                    [
                        *self.python,
                        "reference",
                        backend,
                        "--port",
                        str(port),
                        "--storage-dir",
                        str(self.stack.tmp / f"storage-{backend}"),
                    ],
                    ready=f"127.0.0.1:{port}",
                )
                self._reference[backend] = f"http://127.0.0.1:{port}"
            return self._reference[backend]

    def shim(self, rust: str, go: str, workers: int = 1) -> tuple[str, str, list[int]]:
        """A `shim serve`: its proxy URL, state directory and process ids (workers too)."""
        port, admin = free_port(), free_port()
        state = self.stack.tmp / f"state-{port}"
        process = self.stack.start(
            [
                *self.python,
                "serve",
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--workers",
                str(workers),
            ],
            env={
                "SHIM_RUST_URL": rust,
                "SHIM_GO_URL": go,
                "SHIM_ACCESS_LOG": "false",
                "SHIM_STATE_DIR": str(state),
                "SHIM_PARITY_GATE": "false",
            },
            ready=f"127.0.0.1:{port}",
        )
        for _ in range(200):  # every worker publishes its status once it serves
            if len(list((state / "workers").glob("*.json"))) >= workers:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return f"http://127.0.0.1:{port}", str(state), tree(process.pid)

    def fast_stub(self) -> tuple[str, str | None, list[int]]:
        """The stub backend (nginx when installed) and nginx as a reverse proxy in front of
        it: the stub's URL, nginx's URL (None without nginx) and nginx's process ids."""
        stub_port = free_port()
        if nginx_binary() is None:
            self.stack.uvicorn("stub_backend", stub_port, {})
            return f"http://127.0.0.1:{stub_port}", None, []
        nginx_port = free_port()
        process = self.stack.nginx(stub_port, nginx_port)
        return f"http://127.0.0.1:{stub_port}", f"http://127.0.0.1:{nginx_port}", tree(process.pid)

    def flag(self, state: str, *arguments: str) -> None:
        subprocess.run(
            [*self.python, "flags", "set", *arguments],
            env={**os.environ, "SHIM_STATE_DIR": state, "SHIM_PARITY_GATE": "false"},
            capture_output=True,
            check=True,
        )
        time.sleep(0.5)

    def small(self) -> list[Target]:
        stub, nginx, nginx_pids = self.fast_stub()
        floor_port, recipe_port = free_port(), free_port()
        floor = self.stack.uvicorn("floor_proxy", floor_port, {"UPSTREAM": stub})
        recipe = self.stack.uvicorn("starlette_httpx_proxy", recipe_port, {"UPSTREAM": stub})
        shim_url, _, shim_pids = self.shim(stub, stub)
        two_url, _, two_pids = self.shim(stub, stub, workers=2)
        targets = [Target("direct", f"{stub}/query", SMALL)]
        if nginx:
            targets.append(Target("nginx", f"{nginx}/query", SMALL, nginx_pids))
        targets += [
            Target(FLOOR, f"http://127.0.0.1:{floor_port}/query", SMALL, [floor.pid]),
            Target("shim", f"{shim_url}/query", SMALL, shim_pids),
            Target("shim, 2 workers", f"{two_url}/query", SMALL, two_pids),
            Target(RECIPE, f"http://127.0.0.1:{recipe_port}/query", SMALL, [recipe.pid]),
        ]
        return targets

    def embed(self) -> list[Target]:
        """Three directions, 8 texts x 768 and then the batch series: served by Go, the Go face
        passes through (same-dialect) and the Rust face is rewritten (renamed, every vector
        normalised); served by Rust, the Go face is only renamed (rename-only, its numbers
        spliced as they came), against the Rust face passing through."""
        rust, go = self.reference("rust"), self.reference("go")
        to_go, state, pids = self.shim(rust, go)
        self.flag(state, "embed", "go")
        to_rust, _, rust_pids = self.shim(rust, go)  # embed's default backend is rust
        targets = [
            Target("direct", f"{go}/v1/embed", EMBED_8),
            Target("shim same-dialect", f"{to_go}/v1/embed", EMBED_8, pids),
            Target("shim cross-dialect", f"{to_go}/ai/embed", EMBED_8, pids),
            Target("shim same-dialect (rust)", f"{to_rust}/ai/embed", EMBED_8, rust_pids),
            Target("shim rename-only", f"{to_rust}/v1/embed", EMBED_8, rust_pids),
        ]
        for texts in self.embed_batches:
            body = embed_body(texts)
            targets += [
                Target(f"{texts}x768 same-dialect", f"{to_go}/v1/embed", body, pids),
                Target(f"{texts}x768 normalising", f"{to_go}/ai/embed", body, pids),
                Target(f"{texts}x768 rename-only", f"{to_rust}/v1/embed", body, rust_pids),
            ]
        return targets

    def storage(self) -> list[Target]:
        rust = self.reference("rust")
        shim_url, _, pids = self.shim(rust, self.reference("go"))
        import httpx

        blob = os.urandom(STORAGE_BYTES)
        httpx.put(f"{rust}/storage/bench/blob", content=blob, timeout=60).raise_for_status()
        c = min(STORAGE_CONNECTIONS, self.connections)
        return [
            Target("direct", f"{rust}/storage/bench/blob", connections=c),
            Target("shim", f"{shim_url}/storage/bench/blob", pids=pids, connections=c),
        ]

    def shadow(self) -> list[Target]:
        rust, go = self.reference("rust"), self.reference("go")
        off_url, _, off_pids = self.shim(rust, go)
        on_url, state, on_pids = self.shim(rust, go)
        self.flag(state, "embed", "rust", "--shadow")
        rate = self.shadow_rate
        return [
            Target("shadow off", f"{off_url}/ai/embed", EMBED_8, off_pids, rate=rate),
            Target("shadow on", f"{on_url}/ai/embed", EMBED_8, on_pids, rate=rate),
        ]

    def jq(self) -> list[Target]:
        """A small answer translated by jq programs (rerank, declared in the route table)
        against one of similar size translated by a built-in Python adapter (retrieve, three
        hits), both served by Go to a Rust-face client; rerank same-dialect as the floor."""
        go = self.reference("go")
        shim_url, state, pids = self.shim(self.reference("rust"), go)
        self.flag(state, "rerank", "go")
        self.flag(state, "retrieve", "go")
        documents = [f"forklift operator {i}" for i in range(5)]
        rerank = {"query": "forklift operator", "documents": documents, "top_n": 3}
        go_rerank = {"query": "forklift operator", "docs": documents, "k": 3}
        retrieve = {"query": "forklift operator", "k": 3}
        return [
            Target("direct (rerank)", f"{go}/v1/rerank", json.dumps(go_rerank)),
            Target(
                "shim rerank same-dialect", f"{shim_url}/v1/rerank", json.dumps(go_rerank), pids
            ),
            Target("shim rerank via jq", f"{shim_url}/ai/rerank", json.dumps(rerank), pids),
            Target(
                "shim retrieve via Python", f"{shim_url}/vectors/hybrid", json.dumps(retrieve), pids
            ),
        ]

    def burst(self) -> list[Target]:
        """`burst_size` requests at once against the fast stub: nginx as a reverse proxy, the
        shim with 1 and with 2 workers (shim/serving/admission.py queues what the limit cannot
        take)."""
        stub, nginx, nginx_pids = self.fast_stub()
        one_url, _, one_pids = self.shim(stub, stub)
        two_url, _, two_pids = self.shim(stub, stub, workers=2)
        n = self.burst_size
        targets = [Target("direct", f"{stub}/ai/embed", SMALL, burst=n)]
        if nginx:
            targets.append(Target("nginx", f"{nginx}/ai/embed", SMALL, nginx_pids, burst=n))
        targets += [
            Target("shim", f"{one_url}/ai/embed", SMALL, one_pids, burst=n),
            Target("shim, 2 workers", f"{two_url}/ai/embed", SMALL, two_pids, burst=n),
        ]
        return targets

    def overload(self) -> list[Target]:
        """`overload_size` connections at once to one shim worker in front of a backend that
        takes SLOW_MS per answer, beside nginx in front of it unbounded, and bounded like the
        shim (`max_conns`; open-source nginx has no queue, so the rest get a 502 at once)."""
        port = free_port()
        slow = f"http://127.0.0.1:{port}"
        self.stack.uvicorn(
            "slow_backend",
            port,
            {"DELAY_MS": str(SLOW_MS)},
            # no stale keep-alive connection between rounds; every connection nginx opens
            extra=["--timeout-keep-alive", "60", "--backlog", "8192"],
        )
        shim_url, _, shim_pids = self.shim(slow, slow)
        peak = f"{slow}/__peak"
        n = self.overload_size
        targets = [Target("shim", f"{shim_url}/ai/embed", SMALL, shim_pids, burst=n, peak_url=peak)]
        if nginx_binary():
            ceiling = CEILING
            ports = {
                "nginx": (free_port(), None),
                f"nginx max_conns={ceiling}": (free_port(), ceiling),
            }
            process = self.stack.nginx_proxies(port, {p: bound for p, bound in ports.values()})
            pids = tree(process.pid)
            for name, (proxy_port, _) in ports.items():
                url = f"http://127.0.0.1:{proxy_port}/ai/embed"
                targets.append(Target(name, url, SMALL, pids, burst=n, peak_url=peak))
        return targets
