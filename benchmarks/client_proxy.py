"""A raw ASGI pass-through whose upstream client is chosen by $KIND (serve with uvicorn).

KIND=aiohttp | httpx-aiohttp | httpx; UPSTREAM is the backend's base URL.
"""

import os

UPSTREAM = os.environ["UPSTREAM"]
KIND = os.environ["KIND"]
JSON = [(b"content-type", b"application/json")]
clients = {}


def client():
    if "c" not in clients:
        if KIND == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=100)
            clients["c"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        elif KIND == "httpx-aiohttp":
            import httpx
            import httpx_aiohttp

            transport = httpx_aiohttp.AiohttpTransport(trust_env=False)
            clients["c"] = httpx.AsyncClient(transport=transport, trust_env=False)
        else:
            import httpx

            limits = httpx.Limits(max_connections=100)
            clients["c"] = httpx.AsyncClient(trust_env=False, limits=limits)
    return clients["c"]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    c = client()
    if KIND == "aiohttp":
        async with c.request(scope["method"], UPSTREAM + scope["path"]) as r:
            await send({"type": "http.response.start", "status": r.status, "headers": JSON})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        return
    r = await c.send(c.build_request(scope["method"], UPSTREAM + scope["path"]), stream=True)
    try:
        await send({"type": "http.response.start", "status": r.status_code, "headers": JSON})
        async for chunk in r.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await r.aclose()
