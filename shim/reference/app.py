"""The reference Rust and Go gateways as Starlette apps, speaking the contract's shapes.

One handler per endpoint, parameterised by the dialect it speaks: the two gateways share
their data (corpus, SQL table, embeddings) and differ only on the wire, which is exactly
what the shim has to bridge. Each handler is served at the path the route table gives its
endpoint's face in this dialect (the shim's own table, so the two cannot disagree); an
endpoint the table lacks, or a face it does not declare, is not served.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from shim.reference.corpus import INDEX_NAME, Corpus
from shim.reference.embedding import DIMENSIONS, MODELS, embed_batch, unit_embedding
from shim.reference.sqldb import SqlDatabase, SqlRefused
from shim.reference.storage import ObjectStore
from shim.route_config import load_routes
from shim.routes import RouteTable
from shim.settings import load_settings
from shim.types import Backend

DEFAULT_MODEL: dict[Backend, str] = {"rust": "nomic-embed-text", "go": "nomic-embed-text-v2-moe"}
K_FIELD: dict[Backend, str] = {"rust": "k", "go": "top_k"}
RERANK_FIELDS: dict[Backend, tuple[str, str]] = {
    "rust": ("documents", "top_n"),
    "go": ("docs", "k"),
}
RERANK_MODEL = "nomic-embed-text"
MAX_K = 1000
_WORD = re.compile(r"\S+")
Handler = Callable[[Request], Awaitable[Response]]


class RefusedRequest(Exception):
    """A request the reference backend refuses, with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, headers=headers, media_type="application/json")


async def json_body(request: Request) -> dict[str, Any]:
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise RefusedRequest(400, f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RefusedRequest(400, "body must be a JSON object")
    return document


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RefusedRequest(400, f"{name} must be {what}")
    return value


def top_k(body: dict[str, Any], backend: Backend) -> int:
    k: int = field(body, K_FIELD[backend], int, "an integer")
    if not 1 <= k <= MAX_K:
        raise RefusedRequest(400, f"{K_FIELD[backend]} must be between 1 and {MAX_K}")
    return k


class ReferenceGateway:
    """State shared by one gateway's handlers."""

    def __init__(self, backend: Backend, storage_dir: Path) -> None:
        self.backend = backend
        self.corpus = Corpus()
        self.sql = SqlDatabase(self.corpus.workers)
        self.store = ObjectStore(storage_dir)

    def hits(self, hits: list[Any], *, with_text: bool) -> dict[str, Any]:
        """Hits in this gateway's dialect: Rust scores descending, Go distances ascending."""
        rows = []
        for hit in hits:
            row: dict[str, Any] = {"id": hit.worker.id}
            if self.backend == "rust":
                row["score"] = hit.similarity
            else:
                row["distance"] = 1.0 - hit.similarity
            if with_text:
                row["text"] = hit.worker.text
            rows.append(row)
        return {"results": rows} if self.backend == "rust" else {"hits": rows}

    async def embed(self, request: Request) -> Response:
        body = await json_body(request)
        texts = field(body, "texts", list, "a list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise RefusedRequest(400, "texts must be a list of strings")
        model = body.get("model", DEFAULT_MODEL[self.backend])
        if model not in MODELS:
            raise RefusedRequest(404, f"model {model!r} not found")
        # float32, written as its shortest text: what both gateways put on the wire (a Go
        # []float32, a Rust Vec<f32>), so rehearsals and the bench parse what production does.
        matrix = embed_batch(texts, model, unit=self.backend == "rust").astype(np.float32)
        if self.backend == "rust":
            return json_response({"embeddings": matrix, "dimensions": DIMENSIONS, "model": model})
        return json_response({"vectors": matrix, "dimension": DIMENSIONS, "model": model})

    async def vectors_search(self, request: Request) -> Response:
        body = await json_body(request)
        index = field(body, "index", str, "a string")
        if index != INDEX_NAME:
            raise RefusedRequest(404, f"index {index!r} not found (have {INDEX_NAME!r})")
        vector = field(body, "vector", list, "a list of numbers")
        try:
            array = np.array(vector, dtype=np.float64)
        except (TypeError, ValueError):
            raise RefusedRequest(400, "vector must be a list of numbers") from None
        if array.shape != (DIMENSIONS,) or not np.isfinite(array).all():
            raise RefusedRequest(400, f"vector must have {DIMENSIONS} finite numbers")
        k = top_k(body, self.backend)
        return json_response(self.hits(self.corpus.search(array, k), with_text=False))

    async def retrieve(self, request: Request) -> Response:
        body = await json_body(request)
        query = field(body, "query", str, "a string")
        k = top_k(body, self.backend)
        return json_response(self.hits(self.corpus.query(query, k), with_text=True))

    async def sql_query(self, request: Request) -> Response:
        body = await json_body(request)
        statement = field(body, "sql" if self.backend == "rust" else "query", str, "a string")
        try:
            names, types, rows = await asyncio.to_thread(self.sql.run, statement)
        except SqlRefused as exc:
            raise RefusedRequest(400, f"SQL error: {exc}") from None
        if self.backend == "rust":
            return json_response({"columns": names, "rows": rows, "row_count": len(rows)})
        columns = [{"name": n, "type": t} for n, t in zip(names, types, strict=True)]
        return json_response({"columns": columns, "rows": rows})

    async def chat(self, request: Request) -> Response:
        body = await json_body(request)
        messages = field(body, "messages", list, "a list of messages")
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise RefusedRequest(400, "messages must be a non-empty list of {role, content}")
        provider = body.get("provider", "echo")
        reply = f"echo: {messages[-1]['content']}"
        prompt_tokens = sum(len(_WORD.findall(m["content"])) for m in messages)
        completion_tokens = len(_WORD.findall(reply))
        if self.backend == "rust":
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
            return json_response({"reply": reply, "provider": provider, "usage": usage})
        tokens = {"input": prompt_tokens, "output": completion_tokens}
        return json_response({"content": reply, "provider": provider, "tokens": tokens})

    async def rerank(self, request: Request) -> Response:
        """Documents ranked by cosine to the query. Not one of the contract's eight: the
        endpoint the route table declares with jq programs (README, worked example).

        Rust `{query, documents, top_n}` -> `{results: [{index, relevance_score}]}`;
        Go `{query, docs, k}` -> `{ranking: [{doc, score}], took_ms}` (`took_ms` differs on
        every call). Strict about its own dialect: any other field is refused, so a request
        that was not translated cannot pass unnoticed.
        """
        started = time.perf_counter()
        body = await json_body(request)
        docs_field, k_field = RERANK_FIELDS[self.backend]
        unknown = set(body) - {"query", docs_field, k_field}
        if unknown:
            raise RefusedRequest(400, f"unknown field {sorted(unknown)[0]!r}")
        query = field(body, "query", str, "a string")
        documents = field(body, docs_field, list, "a list of strings")
        if not all(isinstance(d, str) for d in documents):
            raise RefusedRequest(400, f"{docs_field} must be a list of strings")
        k = field(body, k_field, int, "an integer")
        if not 1 <= k <= MAX_K:
            raise RefusedRequest(400, f"{k_field} must be between 1 and {MAX_K}")
        target = unit_embedding(query, RERANK_MODEL)
        scores = [float(unit_embedding(d, RERANK_MODEL) @ target) for d in documents]
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:k]
        if self.backend == "rust":
            results = [{"index": i, "relevance_score": scores[i]} for i in order]
            return json_response({"results": results})
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        ranking = [{"doc": i, "score": scores[i]} for i in order]
        return json_response({"ranking": ranking, "took_ms": took_ms})

    async def storage(self, request: Request) -> Response:
        key = request.path_params["key"]
        if request.method == "PUT":
            content_type = request.headers.get("content-type", "application/octet-stream")
            stored = await self.store.put(key, request.stream(), content_type)
            return json_response(
                {"key": key, "size": stored.size, "etag": stored.etag}, 201, {"etag": stored.etag}
            )
        if request.method == "DELETE":
            if not self.store.delete(key):
                raise RefusedRequest(404, f"no object {key!r}")
            return Response(status_code=204)
        found = self.store.get(key)
        if found is None:
            raise RefusedRequest(404, f"no object {key!r}")
        return FileResponse(found.path, media_type=found.content_type, headers={"etag": found.etag})

    async def matrix_search(self, request: Request) -> Response:
        body = await json_body(request)
        query = field(body, "query", str, "a string")
        role = body.get("role")
        if role is not None and not isinstance(role, str):
            raise RefusedRequest(400, "role must be a string")
        hits = self.corpus.query(query, len(self.corpus.workers), role=role)
        ranked = sorted(
            ((self.corpus.boosted_distance(hit, role), hit.worker.id, hit) for hit in hits),
            key=lambda entry: (entry[0], entry[1]),
        )[: top_k(body, "go")]
        return json_response(
            {
                "hits": [
                    {"id": h.worker.id, "distance": d, "role": h.worker.role} for d, _, h in ranked
                ]
            }
        )

    async def playbooks_record(self, request: Request) -> Response:
        body = await json_body(request)
        field(body, "query", str, "a string")
        worker_id = field(body, "id", str, "a string")
        role = field(body, "role", str, "a string")
        score = field(body, "score", (int, float), "a number")
        if worker_id not in self.corpus.by_id:
            raise RefusedRequest(404, f"no worker {worker_id!r}")
        if not 0.0 <= score <= 1.0:
            raise RefusedRequest(400, "score must be between 0 and 1")
        self.corpus.record_playbook(worker_id, role, float(score))
        return json_response({"recorded": True})


def create_reference_app(
    backend: Backend,
    *,
    storage_dir: Path,
    latency_ms: float = 0.0,
    routes: RouteTable | None = None,
) -> Starlette:
    """The `backend` gateway; every answer is delayed by `latency_ms` (rehearse slowness).

    Paths come from `routes`, by default the route table the shim's settings name.
    """
    if routes is None:
        routes = load_routes(load_settings().resolved_routes_file())
    gateway = ReferenceGateway(backend, storage_dir)
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

    handlers: dict[str, Handler] = {
        "embed": gateway.embed,
        "vectors_search": gateway.vectors_search,
        "retrieve": gateway.retrieve,
        "sql": gateway.sql_query,
        "storage": gateway.storage,
        "chat": gateway.chat,
        "rerank": gateway.rerank,
        "matrix_search": gateway.matrix_search,
        "playbooks_record": gateway.playbooks_record,
    }
    served = [Route("/health", health, methods=["GET"])]
    for name, handler in handlers.items():
        face = routes[name].faces.get(backend) if name in routes else None
        if face is not None:
            served.append(Route(face.template, endpoint(handler), methods=sorted(face.methods)))
    return Starlette(routes=served)
