"""A backend for the tests that need to see what the shim sends, or to misbehave on purpose.

Any path. By default it echoes what it received as JSON. With `X-Test-Mode: slow-body` it
sends the first bytes of its answer, waits `X-Test-Delay` seconds (default 2), then the rest.
"""

import asyncio
import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    json_type = [(b"content-type", b"application/json")]
    if headers.get("x-test-mode") == "slow-body":
        await send({"type": "http.response.start", "status": 200, "headers": json_type})
        await send({"type": "http.response.body", "body": b'{"first": true, ', "more_body": True})
        await asyncio.sleep(float(headers.get("x-test-delay", "2")))
        await send({"type": "http.response.body", "body": b'"last": true}'})
        return
    echo = {
        "method": scope["method"],
        "path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "headers": [[k.decode().lower(), v.decode()] for k, v in scope["headers"]],
        "body_length": len(body),
    }
    await send({"type": "http.response.start", "status": 200, "headers": json_type})
    await send({"type": "http.response.body", "body": json.dumps(echo).encode()})
