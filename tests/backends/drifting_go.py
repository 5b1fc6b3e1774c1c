"""A Go gateway that drifts: the reference Go backend behind it, its answers bent.

- `/v1/embed`: every vector turned to cosine 0.95 from the true one, plus a `took_ms` field
  the Rust side never sends;
- `/v1/vectors/search`: the top hit dropped (one more fetched, so the count stays k);
- `/v1/rerank`: every score 10% lower (the same documents in the same order);
- anything else: passed on as it is.
UPSTREAM names the reference Go backend.
"""

import json
import os

import httpx
import numpy as np

UPSTREAM = os.environ["UPSTREAM"]
COSINE = 0.95
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=30)


def bend(vector):
    v = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(v)
    u = v / norm
    noise = np.random.default_rng(len(vector)).standard_normal(len(v))
    r = noise - (noise @ u) * u
    r /= np.linalg.norm(r)
    return (norm * (COSINE * u + (1 - COSINE**2) ** 0.5 * r)).tolist()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/v1/vectors/search":
        request = json.loads(body)
        request["top_k"] += 1
        body = json.dumps(request).encode()
    upstream = await client.request(
        scope["method"], path, content=body, headers={"content-type": "application/json"}
    )
    answer = upstream.content
    if upstream.status_code == 200 and path == "/v1/embed":
        document = upstream.json()
        document["vectors"] = [bend(v) for v in document["vectors"]]
        document["took_ms"] = 3
        answer = json.dumps(document).encode()
    elif upstream.status_code == 200 and path == "/v1/rerank":
        document = upstream.json()
        for entry in document["ranking"]:
            entry["score"] *= 0.9
        answer = json.dumps(document).encode()
    elif upstream.status_code == 200 and path == "/v1/vectors/search":
        document = upstream.json()
        document["hits"] = document["hits"][1:]
        answer = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": upstream.status_code,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": answer})
