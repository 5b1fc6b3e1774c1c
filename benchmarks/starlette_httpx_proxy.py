"""The common recipe, for comparison: a Starlette route forwarding with plain httpx.

UPSTREAM is the backend's base URL (serve with uvicorn).
"""

import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ["UPSTREAM"]
client = httpx.AsyncClient(base_url=UPSTREAM, trust_env=False)


async def forward(request: Request) -> Response:
    upstream = await client.request(request.method, request.url.path, content=await request.body())
    return Response(upstream.content, upstream.status_code, media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
