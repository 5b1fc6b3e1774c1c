"""Measure the upstream client choice: one raw ASGI pass-through, three clients.

Run: .venv/bin/python benchmarks/client_choice.py   (needs `wrk` on PATH)

Starts a tiny backend, then for each client a one-worker uvicorn proxy in front of it,
drives it with wrk at 32 connections and reports RPS and the proxy's CPU per request.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

BACKEND = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"ok":true,"items":[1,2,3]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

PROXY = '''
import os
UP = os.environ["UPSTREAM"]
KIND = os.environ["KIND"]
state = {}

async def _client():
    if "c" not in state:
        if KIND == "aiohttp":
            import aiohttp
            state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), auto_decompress=False)
        elif KIND == "httpx-aiohttp":
            import httpx, httpx_aiohttp
            state["c"] = httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(trust_env=False), trust_env=False)
        else:
            import httpx
            state["c"] = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=100))
    return state["c"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    c = await _client()
    if KIND == "aiohttp":
        async with c.request(scope["method"], UP + scope["path"]) as r:
            await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", b"application/json")]})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
    else:
        req = c.build_request(scope["method"], UP + scope["path"])
        r = await c.send(req, stream=True)
        try:
            await send({"type": "http.response.start", "status": r.status_code, "headers": [(b"content-type", b"application/json")]})
            async for chunk in r.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await r.aclose()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def uvicorn(module_dir: str, module: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port), "--loop", "uvloop",
           "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=module_dir, env={**os.environ, **env})


def main() -> None:
    import tempfile

    tmp = tempfile.mkdtemp()
    open(f"{tmp}/backend.py", "w").write(BACKEND)
    open(f"{tmp}/proxy.py", "w").write(PROXY)
    bport = free_port()
    backend = uvicorn(tmp, "backend", bport, {})
    wait_port(bport)
    results = []
    try:
        for rnd in range(2):
            for kind in ("aiohttp", "httpx-aiohttp", "httpx"):
                port = free_port()
                proxy = uvicorn(tmp, "proxy", port, {"UPSTREAM": f"http://127.0.0.1:{bport}", "KIND": kind})
                wait_port(port)
                subprocess.run(["wrk", "-t1", "-c32", "-d2s", f"http://127.0.0.1:{port}/x"], capture_output=True)
                c0 = cpu_seconds(proxy.pid)
                out = subprocess.run(["wrk", "-t1", "-c32", "-d6s", f"http://127.0.0.1:{port}/x"],
                                     capture_output=True, text=True).stdout
                c1 = cpu_seconds(proxy.pid)
                proxy.terminate()
                proxy.wait()
                n = int(re.search(r"(\d+) requests in", out).group(1))
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                results.append((rnd, kind, rps, (c1 - c0) / n * 1e6))
                print(f"round {rnd} {kind:14s} {rps:9.0f} rps  {(c1 - c0) / n * 1e6:7.0f} us CPU/request", flush=True)
    finally:
        backend.terminate()


if __name__ == "__main__":
    main()
