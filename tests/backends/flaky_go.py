"""A Go gateway that fails every other request with 503 (the reference Go backend behind it).

UPSTREAM names the reference Go backend. `GET /health` always answers.
"""

import itertools
import os

import httpx

UPSTREAM = os.environ["UPSTREAM"]
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=30)
counter = itertools.count()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] != "/health" and next(counter) % 2 == 0:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"error": "overloaded"}'})
        return
    upstream = await client.request(
        scope["method"], scope["path"], content=body, headers={"content-type": "application/json"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status_code,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": upstream.content})
