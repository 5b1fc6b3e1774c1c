"""A new endpoint costs one adapter and one route-table entry, nothing else in the shim.

`sketch` is a toy vector endpoint whose fields are nobody else's: Rust `POST /ai/sketch`
`{shape, n}` -> `{points, label}` (unit vectors), Go `POST /v1/sketch` `{shape, count}` ->
`{coords, label, precision}` (the same directions at twice the length). Its adapter, below,
says everything the shim needs: both wire shapes, the comparator and the field it reads
(cosine on `points`: a JSON diff would see the lengths differ), what a translation loses and
what that means, which requests may be sent twice (a `random` shape never), and samples for
the probe. The route table in a temporary directory names it as
`tests.test_toy_endpoint:SKETCH`; one toy backend (below too) speaks both dialects, on
their own paths. Translation, shadow comparison, the probe and `shim check --explain` then
work for it through real servers, with no other module touched.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.base import Comparing, Dialect, JSONObject, Translation, require, require_object
from adapters.errors import OptionsError
from shim.cutover.file_store import FileBackend
from shim.cutover.flags import FlagStore
from shim.route_config import load_routes
from tests.flipping import wait_for_generation, wait_for_parity
from tests.servers import ROOT, Shim, own_backend

COUNT_FIELD: Mapping[Dialect, str] = {"rust": "n", "go": "count"}
POINTS_FIELD: Mapping[Dialect, str] = {"rust": "points", "go": "coords"}
NOT_REPEATABLE = "random"  # a shape drawn afresh each time: asking twice gives two answers


class SketchAdapter:
    """The toy endpoint, declared in full (adapters/base.py, `Adapter`)."""

    name = "sketch"
    comparing = Comparing("cosine", field=POINTS_FIELD)
    loss_descriptions: Mapping[str, str] = {"precision": "Go's precision tag (Rust has none)"}
    repeat_rule: str | None = f"shapes other than {NOT_REPEATABLE}"

    def parse_options(self, raw: Mapping[str, Any]) -> None:
        if raw:
            raise OptionsError("sketch takes no options", field=sorted(raw)[0])

    def needs_rewrite(self, *, client: Dialect, backend: Dialect, options: None) -> bool:
        return client != backend

    def translate_request(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> JSONObject:
        request = require_object(body, what="sketch request")
        shape = require(request, "shape", str, "a string")
        return {
            "shape": shape,
            COUNT_FIELD[backend]: require(request, COUNT_FIELD[client], int, "an integer"),
        }

    def translate_response(
        self, body: Any, *, client: Dialect, backend: Dialect, options: None
    ) -> Translation:
        answer = require_object(body, what="sketch answer")
        points = require(answer, POINTS_FIELD[backend], list, "a list of points")
        translated = {POINTS_FIELD[client]: points, "label": answer.get("label")}
        if client == "go" and "precision" in answer:
            translated["precision"] = answer["precision"]
        return Translation(translated, self.losses(client=client, backend=backend, options=None))

    def losses(self, *, client: Dialect, backend: Dialect, options: None) -> str | None:
        return "precision" if (client, backend) == ("go", "rust") else None

    def compared_in(self, client: Dialect) -> Dialect:
        return "rust"

    def may_repeat(self, request: Any, *, client: Dialect, options: None) -> bool:
        return isinstance(request, dict) and request.get("shape") != NOT_REPEATABLE

    def samples(self, count: int, *, client: Dialect, options: None) -> list[JSONObject]:
        return [{"shape": "circle", COUNT_FIELD[client]: 3 + i} for i in range(count)]


SKETCH = SketchAdapter()

TABLE = """
[routes.sketch]
adapter = "tests.test_toy_endpoint:SKETCH"
default = "rust"
idempotent = true
rust = { path = "/ai/sketch", methods = ["POST"] }
go = { path = "/v1/sketch", methods = ["POST"] }

[routes.sketch.parity]
min_samples = 3
"""


# -- the toy backend: both dialects in one server, each strict about its own fields --------

RECEIVED: list[list[str]] = []


def circle(n: int, *, length: float = 1.0, turn: float = 0.0) -> list[list[float]]:
    return [
        [
            length * math.cos(2 * math.pi * i / n + turn),
            length * math.sin(2 * math.pi * i / n + turn),
        ]
        for i in range(n)
    ]


def toy_points(shape: str, n: int, *, length: float, go: bool) -> list[list[float]]:
    if shape == NOT_REPEATABLE:
        return [[random.random(), random.random()] for _ in range(n)]
    return circle(n, length=length, turn=math.pi if go and shape == "flipped" else 0.0)


def toy_endpoint(dialect: Dialect) -> Any:
    async def handle(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        if set(body) != {"shape", COUNT_FIELD[dialect]}:  # the other dialect: refused
            return JSONResponse({"error": f"unknown fields {sorted(body)}"}, 400)
        RECEIVED.append([dialect, body["shape"]])
        n = body[COUNT_FIELD[dialect]]
        points = toy_points(
            body["shape"], n, length=2.0 if dialect == "go" else 1.0, go=dialect == "go"
        )
        answer: JSONObject = {POINTS_FIELD[dialect]: points, "label": body["shape"]}
        if dialect == "go":
            answer["precision"] = "f64"
        return JSONResponse(answer)

    return handle


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def received(request: Request) -> JSONResponse:
    return JSONResponse(RECEIVED)


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/__received", received),
        Route("/ai/sketch", toy_endpoint("rust"), methods=["POST"]),
        Route("/v1/sketch", toy_endpoint("go"), methods=["POST"]),
    ]
)


# -- the test ---------------------------------------------------------------------------------


def test_a_toy_endpoint_translates_shadows_probes_and_explains_with_only_its_adapter(
    tmp_path: Path,
) -> None:
    table = tmp_path / "routes.toml"
    table.write_text(TABLE)
    backend, url = own_backend(tmp_path, "tests.test_toy_endpoint", app_dir=ROOT)
    shim = Shim(tmp_path, rust_url=url, go_url=url, SHIM_ROUTES_FILE=str(table)).start()
    try:
        # Translation: a Go-face client served by Rust gets the Go shape, and is told the loss.
        answer = httpx.post(f"{shim.url}/_go/v1/sketch", json={"shape": "circle", "count": 4})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-shim-backend"] == "rust"
        assert answer.headers["x-shim-lossy"] == "precision"
        assert answer.json() == {"coords": circle(4), "label": "circle"}

        # Shadow: mirrored to Go and compared by cosine on the adapter's own field.
        routes = load_routes(table)
        store = FlagStore(FileBackend(shim.state_dir, routes), routes, {})
        store.set("sketch", serve="rust", shadow=True, actor="test")
        wait_for_generation(shim, store.read().generation)
        for n in (3, 5, 8):
            assert httpx.post(f"{shim.url}/ai/sketch", json={"shape": "circle", "n": n}).is_success
        assert httpx.post(
            f"{shim.url}/ai/sketch", json={"shape": NOT_REPEATABLE, "n": 2}
        ).is_success
        verdict = wait_for_parity(shim, "sketch", samples=3)
        assert verdict["verdict"] == "PASS" and verdict["comparator"] == "cosine", verdict
        assert verdict["samples"] == 3  # the random shape was never mirrored
        time.sleep(0.2)
        mirrored = [
            shape for dialect, shape in httpx.get(f"{url}/__received").json() if dialect == "go"
        ]
        assert sorted(mirrored) == ["circle"] * 3

        # The probe: the adapter's samples pass; vectors Go points the other way fail.
        probe = shim.cli("parity", "probe", "sketch", "--samples", "4")
        assert "PASS 4/4 cos≥" in probe.stdout, probe.stdout
        flipped = tmp_path / "flipped.jsonl"
        flipped.write_text(json.dumps({"shape": "flipped", "n": 4}) + "\n")
        turned = shim.cli("parity", "probe", "sketch", "--input", str(flipped), check=False)
        assert turned.returncode == 1 and "FAIL 0/1 min cos=-1.00000" in turned.stdout, (
            turned.stdout
        )

        # shim check --explain: the adapter, its repeat rule, its loss in its own words.
        explained = shim.cli("check", "--explain").stdout
        assert (
            "sketch  (default rust; adapter sketch; idempotent: shapes other than random)"
            in explained
        )
        assert (
            "go   client <- rust backend: translated by sketch; loses Go's precision tag "
            "(Rust has none) (X-Shim-Lossy: precision)"
        ) in explained
    finally:
        shim.stop()
        backend.stop()
