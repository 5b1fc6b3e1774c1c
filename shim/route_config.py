"""Reading the route table: the TOML file parsed and every key checked once at start-up,
each ConfigError naming the exact key (`routes.embed.parity.min_cosine`), into the immutable
`shim.routes.RouteTable` the request path matches against.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from adapters.base import ADAPTER_MEMBERS, Adapter
from adapters.declared import JqAdapter
from adapters.errors import OptionsError
from adapters.registry import ADAPTERS
from shim.errors import ConfigError
from shim.routes import (
    _PARAMETER,
    DEFAULT_FALLBACK_ON,
    GO_PREFIX,
    Face,
    GuardPolicy,
    ParityPolicy,
    Route,
    RouteTable,
)
from shim.types import BACKENDS, Backend

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ROUTE_KEYS = frozenset(
    {"adapter", "default", "idempotent", "rust", "go", "options", "parity", "guard"}
    | {"connect_timeout", "read_timeout", "total_timeout", "queue_timeout", "fallback_on", "body"}
)
BODY_KINDS = ("json", "bytes")
_DECLARED_KEYS = frozenset({"jq", "examples"})  # an endpoint declared with adapter = "jq"
COMPARATORS = ("cosine", "ranking", "json", "bytes")
READ_ONLY: Literal["read-only"] = "read-only"


def load_routes(path: Path) -> RouteTable:
    """Read and validate a route table file; ConfigError names the first bad key."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read route table: {exc.strerror}", key=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", key=str(path)) from None
    return parse_routes(document)


def parse_routes(document: Mapping[str, Any]) -> RouteTable:
    """Validate a parsed route table document into a RouteTable."""
    unknown = set(document) - {"routes"}
    if unknown:
        raise ConfigError("unknown top-level key", key=sorted(unknown)[0])
    table = document.get("routes")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("the route table must declare at least one [routes.NAME]", key="routes")
    routes = {name: _parse_route(name, spec) for name, spec in table.items()}
    return _index(routes)


def _parse_route(name: str, spec: Any) -> Route:
    key = f"routes.{name}"
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ConfigError("endpoint names are lower_snake_case", key=key)
    if not isinstance(spec, Mapping):
        raise ConfigError("must be a table", key=key)
    unknown = set(spec) - _ROUTE_KEYS - _DECLARED_KEYS
    if unknown:
        raise ConfigError("unknown key", key=f"{key}.{sorted(unknown)[0]}")
    faces = {b: _parse_face(f"{key}.{b}", spec[b]) for b in BACKENDS if b in spec}
    if "go" not in faces:
        raise ConfigError("every endpoint needs a go face", key=f"{key}.go")
    default = spec.get("default", "rust" if "rust" in faces else "go")
    if default not in faces:
        raise ConfigError(f"must be one of {sorted(faces)}", key=f"{key}.default")
    adapter_name = spec.get("adapter", "none")
    if adapter_name == "jq":
        adapter: Adapter | None = _declared_adapter(name, spec, key)
    elif declared := sorted(set(spec) & _DECLARED_KEYS):
        raise ConfigError('only an adapter = "jq" endpoint takes this', key=f"{key}.{declared[0]}")
    else:
        adapter = _named_adapter(adapter_name, f"{key}.adapter")
    options_spec = spec.get("options", {})
    if not isinstance(options_spec, Mapping):
        raise ConfigError("must be a table", key=f"{key}.options")
    if adapter is None and options_spec:
        raise ConfigError("a route without an adapter takes no options", key=f"{key}.options")
    try:
        options = adapter.parse_options(options_spec) if adapter else None
    except OptionsError as exc:
        raise ConfigError(exc.message, key=f"{key}.options.{exc.field}") from None
    methods = frozenset().union(*(face.methods for face in faces.values()))
    idempotent_methods = _parse_idempotent(spec.get("idempotent"), methods, adapter, key)
    return Route(
        name=name,
        faces=faces,
        default=default,
        adapter=adapter,
        options=options,
        idempotent_methods=idempotent_methods,
        connect_timeout=_seconds(spec, "connect_timeout", key),
        read_timeout=_seconds(spec, "read_timeout", key),
        total_timeout=_seconds(spec, "total_timeout", key),
        queue_timeout=_seconds(spec, "queue_timeout", key),
        parity=_parse_parity(spec.get("parity", {}), adapter, f"{key}.parity"),
        guard=_parse_guard(spec.get("guard", {}), f"{key}.guard"),
        fallback_on=_parse_fallback_on(spec.get("fallback_on"), f"{key}.fallback_on"),
        json_body=_parse_body(spec.get("body", "json"), adapter is not None, f"{key}.body"),
    )


def _parse_fallback_on(value: Any, key: str) -> frozenset[int]:
    """The backend answers that send an idempotent request to the other backend."""
    if value is None:
        return DEFAULT_FALLBACK_ON
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 500 <= v <= 599 for v in value
    ):
        raise ConfigError("must be a list of 5xx statuses, e.g. [500, 502, 503, 504]", key=key)
    return frozenset(value)


def _parse_body(value: Any, has_adapter: bool, key: str) -> bool:
    """True for JSON request bodies (capped by max_json_bytes), False for streamed bytes."""
    if value not in BODY_KINDS:
        raise ConfigError(f"must be one of {', '.join(BODY_KINDS)}", key=key)
    if value == "bytes" and has_adapter:
        raise ConfigError("a route with an adapter translates JSON: it cannot be bytes", key=key)
    return bool(value == "json")


def _named_adapter(name: Any, key: str) -> Adapter | None:
    """`none`, a built-in adapter's name, or `package.module:ATTRIBUTE` for one of your own
    (imported once, here, like uvicorn's `module:app`)."""
    if name == "none":
        return None
    if not isinstance(name, str):
        raise ConfigError("must be a string", key=key)
    if ":" not in name:
        if name not in ADAPTERS:
            choices = ", ".join(["none", "jq", *sorted(ADAPTERS)])
            raise ConfigError(
                f"unknown adapter {name!r} ({choices}, or package.module:ATTRIBUTE)", key=key
            )
        return ADAPTERS[name]
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} ({exc}): is it installed, or on PYTHONPATH?", key=key
        ) from None
    adapter = getattr(module, attribute, None)
    if adapter is None:
        raise ConfigError(f"{module_name} has no {attribute!r}", key=key)
    missing = [member for member in ADAPTER_MEMBERS if not hasattr(adapter, member)]
    if missing:
        raise ConfigError(
            f"{name} is not an adapter (adapters/base.py): it lacks {', '.join(missing)}",
            key=key,
        )
    return adapter  # type: ignore[no-any-return]  # checked member by member just above


def _declared_adapter(name: str, spec: Mapping[str, Any], key: str) -> JqAdapter:
    """`[routes.NAME.jq]` compiled and `[[routes.NAME.examples]]` checked, once, here."""
    table = spec.get("jq", {})
    if not isinstance(table, Mapping):
        raise ConfigError("must be a table of jq programs", key=f"{key}.jq")
    try:
        return JqAdapter.declare(name, table, examples=spec.get("examples", []))
    except OptionsError as exc:
        raise ConfigError(exc.message, key=f"{key}.{exc.field}") from None


def _parse_guard(spec: Any, key: str) -> GuardPolicy:
    if not isinstance(spec, Mapping):
        raise ConfigError("must be a table", key=key)
    values: dict[str, Any] = {}
    ratios = ("max_error_ratio", "max_parity_failure_ratio")
    for name, value in spec.items():
        where = f"{key}.{name}"
        number = not isinstance(value, bool) and isinstance(value, int | float)
        if name == "enabled":
            if not isinstance(value, bool):
                raise ConfigError("must be true or false", key=where)
        elif name in ratios:
            if not number or not 0 <= value <= 1:
                raise ConfigError("must be a number from 0 to 1", key=where)
        elif name in ("window_seconds", "max_p99_seconds"):
            if not number or value <= 0:
                raise ConfigError("must be a positive number of seconds", key=where)
        elif name in ("min_requests", "trip_after"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError("must be a whole number of at least 1", key=where)
        else:
            raise ConfigError("unknown key", key=where)
        values[name] = value
    return GuardPolicy(**values)


def _parse_parity(spec: Any, adapter: Adapter | None, key: str) -> ParityPolicy:
    if not isinstance(spec, Mapping):
        raise ConfigError("must be a table", key=key)
    default = "bytes" if adapter is None else adapter.comparing.comparator
    values: dict[str, Any] = {"comparator": spec.get("comparator", default)}
    if values["comparator"] not in COMPARATORS:
        raise ConfigError(f"must be one of {list(COMPARATORS)}", key=f"{key}.comparator")
    allowed = dict.fromkeys((default, "json", "bytes"))
    if values["comparator"] not in allowed:
        # Cosine and ranking read fields (the vectors, the hits) only the adapter names.
        choices = " or ".join(f'"{c}"' for c in allowed)
        what = "a jq endpoint" if isinstance(adapter, JqAdapter) else f"adapter {default}"
        raise ConfigError(f"{what} is compared with {choices}", key=f"{key}.comparator")
    bounds = {
        "min_cosine": (-1.0, 1.0),
        "min_recall": (0.0, 1.0),
        "tolerance": (0.0, 1.0),
        "max_failure_ratio": (0.0, 1.0),
        "sample_rate": (0.0, 1.0),
        "noise_rate": (0.0, 1.0),
    }
    for name, value in spec.items():
        if name == "comparator":
            continue
        where = f"{key}.{name}"
        if name in bounds:
            low, high = bounds[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (low <= value <= high)
            ):
                raise ConfigError(f"must be a number from {low} to {high}", key=where)
            values[name] = float(value)
        elif name == "min_samples":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError("must be a whole number of at least 1", key=where)
            values[name] = value
        elif name == "ignore":
            if not isinstance(value, list) or not all(
                isinstance(p, str) and p.startswith("$") for p in value
            ):
                raise ConfigError('must be a list of JSON paths such as "$.took_ms"', key=where)
            values[name] = tuple(value)
        else:
            raise ConfigError("unknown key", key=where)
    return ParityPolicy(**values)


def _parse_face(key: str, spec: Any) -> Face:
    if not isinstance(spec, Mapping) or set(spec) - {"path", "methods"}:
        raise ConfigError('must be { path = "/...", methods = [...] }', key=key)
    template = spec.get("path")
    if not isinstance(template, str) or not template.startswith("/") or "//" in template:
        raise ConfigError('must be an absolute path such as "/v1/embed"', key=f"{key}.path")
    if template.startswith(GO_PREFIX + "/") or template.startswith("/_shim"):
        raise ConfigError("the /_go and /_shim prefixes are the shim's own", key=f"{key}.path")
    methods = spec.get("methods")
    if not isinstance(methods, list) or not methods or not set(methods) <= HTTP_METHODS:
        raise ConfigError(f"must be a list of {sorted(HTTP_METHODS)}", key=f"{key}.methods")
    return Face(template, frozenset(methods), _compile(template, key))


def _compile(template: str, key: str) -> re.Pattern[str] | None:
    if "{" not in template:
        return None
    pattern, position = "", 0
    for found in _PARAMETER.finditer(template):
        pattern += re.escape(template[position : found.start()])
        pattern += f"(?P<{found.group(1)}>.+)" if found.group(2) else f"(?P<{found.group(1)}>[^/]+)"
        position = found.end()
    rest = template[position:]
    if "{" in rest or "}" in rest:
        raise ConfigError("bad parameter: use {name} or {name:path}", key=f"{key}.path")
    return re.compile(pattern + re.escape(rest))


def _parse_idempotent(
    value: Any, methods: frozenset[str], adapter: Adapter | None, key: str
) -> frozenset[str]:
    """The methods that may be repeated; which requests of them is the adapter's rule.

    `"read-only"` is every method, written where the adapter judges each request (SQL): it
    says in the table what the adapter does, and is refused where no adapter would.
    """
    if value is True:
        return methods
    if value is False or value is None:
        return frozenset()
    if value == READ_ONLY:
        if adapter is None or adapter.repeat_rule is None:
            raise ConfigError(
                '"read-only" needs an adapter that judges each request (sql); use true, '
                "false or a list of methods",
                key=f"{key}.idempotent",
            )
        return methods
    if isinstance(value, list) and set(value) <= methods:
        return frozenset(value)
    raise ConfigError(
        'must be true, false, "read-only" or a list of the route\'s methods',
        key=f"{key}.idempotent",
    )


def _seconds(spec: Mapping[str, Any], name: str, key: str) -> float | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError("must be a positive number of seconds", key=f"{key}.{name}")
    return float(value)


def _index(routes: Mapping[str, Route]) -> RouteTable:
    static: dict[tuple[str, Backend], Route] = {}
    patterns: list[tuple[re.Pattern[str], Backend, Route]] = []
    seen: dict[str, str] = {}
    for route in routes.values():
        for dialect, face in route.faces.items():
            if face.template in seen:
                raise ConfigError(
                    f"path {face.template} is already used by {seen[face.template]}",
                    key=f"routes.{route.name}.{dialect}.path",
                )
            seen[face.template] = route.name
            if face.pattern is None:
                static[(face.template, dialect)] = route
            else:
                patterns.append((face.pattern, dialect, route))
    return RouteTable(dict(routes), static, tuple(patterns))
