"""The reference Rust and Go gateways as Starlette apps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shim.reference.embedding import DIMENSIONS, MODELS, embed_batch
from shim.types import Backend

DEFAULT_MODEL: dict[Backend, str] = {"rust": "nomic-embed-text", "go": "nomic-embed-text-v2-moe"}
Handler = Callable[[Request], Awaitable[Response]]


class RefusedRequest(Exception):
    """A request the reference backend refuses, with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(document: Any, status: int = 200) -> Response:
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, media_type="application/json")


async def json_body(request: Request) -> dict[str, Any]:
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise RefusedRequest(400, f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RefusedRequest(400, "body must be a JSON object")
    return document


def embed_handler(backend: Backend) -> Handler:
    async def embed(request: Request) -> Response:
        body = await json_body(request)
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RefusedRequest(400, "texts must be a list of strings")
        model = body.get("model", DEFAULT_MODEL[backend])
        if model not in MODELS:
            raise RefusedRequest(404, f"model {model!r} not found")
        matrix = embed_batch(texts, model, unit=backend == "rust")
        if backend == "rust":
            return json_response({"embeddings": matrix, "dimensions": DIMENSIONS, "model": model})
        return json_response({"vectors": matrix, "dimension": DIMENSIONS, "model": model})

    return embed


def create_reference_app(backend: Backend, *, latency_ms: float = 0.0) -> Starlette:
    """The `backend` gateway; every answer is delayed by `latency_ms` (rehearse slowness)."""
    delay = latency_ms / 1000.0

    def endpoint(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            if delay:
                await asyncio.sleep(delay)
            try:
                return await handler(request)
            except RefusedRequest as exc:
                return json_response({"error": exc.message}, exc.status)

        return wrapped

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "backend": backend})

    embed_path = "/ai/embed" if backend == "rust" else "/v1/embed"
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route(embed_path, endpoint(embed_handler(backend)), methods=["POST"]),
        ]
    )
