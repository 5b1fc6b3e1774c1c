"""A backend for the tests that need to see what the shim sends, or to misbehave on purpose.

Any path. By default it echoes what it received as JSON. Request headers steer it:
- `X-Test-Mode: slow-body`: the first bytes, then `X-Test-Delay` seconds (default 2), the rest;
- `X-Test-Body: <text>`: answer exactly that body (status `X-Test-Status`, default 200);
- `X-Test-Response-Headers: <JSON list of [name, value]>`: add those headers to the answer.
`GET /__received` lists the request ids (X-Request-ID) of everything received so far.
"""

import asyncio
import json

received = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    if scope["path"] == "/__received":
        body = json.dumps(received).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    received.append(
        {
            "path": scope["path"],
            "request_id": headers.get("x-request-id"),
            "shadow": headers.get("x-shim-shadow"),
        }
    )
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer_headers = [(b"content-type", b"application/json")]
    for name, value in json.loads(headers.get("x-test-response-headers", "[]")):
        answer_headers.append((name.encode(), value.encode()))
    if headers.get("x-test-mode") == "slow-body":
        await send({"type": "http.response.start", "status": 200, "headers": answer_headers})
        await send({"type": "http.response.body", "body": b'{"first": true, ', "more_body": True})
        await asyncio.sleep(float(headers.get("x-test-delay", "2")))
        await send({"type": "http.response.body", "body": b'"last": true}'})
        return
    if "x-test-body" in headers:
        status = int(headers.get("x-test-status", "200"))
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": headers["x-test-body"].encode()})
        return
    echo = {
        "method": scope["method"],
        "path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "headers": [[k.decode().lower(), v.decode()] for k, v in scope["headers"]],
        "body_length": len(body),
    }
    await send({"type": "http.response.start", "status": 200, "headers": answer_headers})
    await send({"type": "http.response.body", "body": json.dumps(echo).encode()})
