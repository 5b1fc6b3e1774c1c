"""Python's floor: the least a correct pass-through does (serve with uvicorn; $UPSTREAM).

Raw ASGI + one pooled aiohttp session, and nothing the shim adds (no routing, flags,
metrics, logs, deadlines or error shapes) -- but it does forward what a proxy must: method,
path, query, the client's headers and body, and the backend's status and headers, with the
answer streamed. `shim bench` judges the shim against this.
"""

import gc
import os

import aiohttp

UPSTREAM = os.environ["UPSTREAM"]
NOT_FORWARDED = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}
NOT_RETURNED = {b"connection", b"transfer-encoding", b"keep-alive", b"date"}
session: aiohttp.ClientSession | None = None


async def app(scope, receive, send):
    global session
    if scope["type"] != "http":
        return
    if session is None:
        session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent",))
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = UPSTREAM + scope["path"]
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode("latin-1")
    headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in NOT_FORWARDED]
    async with session.request(scope["method"], url, headers=headers, data=body) as r:
        answer = [(k, v) for k, v in r.raw_headers if k.lower() not in NOT_RETURNED]
        await send({"type": "http.response.start", "status": r.status, "headers": answer})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


gc.freeze()  # as the shim does after start-up: the import-time heap is never collected again
