"""A backend that takes its time: every answer after $DELAY_MS (or the request's `X-Delay-Ms`),
a small fixed JSON, and a count of how many requests it held at once (serve with uvicorn).

`GET /__peak` answers `{"peak": N, "now": M}` (the most requests in progress at once since the
last `DELETE /__peak`, and now): the overload tests and `shim bench` hold the shim's in-flight
ceiling to it.
"""

import asyncio
import json
import os

DELAY = float(os.environ.get("DELAY_MS", "500")) / 1000
BODY = b'{"ok":true,"items":[1,2,3]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
state = {"now": 0, "peak": 0}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/__peak":
        if scope["method"] == "DELETE":
            state["peak"] = state["now"]
        body = json.dumps(state).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
        return
    state["now"] += 1
    state["peak"] = max(state["peak"], state["now"])
    try:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        delay = DELAY
        for name, value in scope["headers"]:
            if name == b"x-delay-ms":
                delay = float(value) / 1000
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    finally:
        state["now"] -= 1
