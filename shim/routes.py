"""The route table: immutable objects built once at start-up (by `shim.route_config`),
matched per request.

A request path is matched in its raw (not percent-decoded) form, so what reaches a backend
is exactly what the client sent for a `{key:path}` parameter, and `%2e%2e` can never turn
into a dot-segment on the way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.base import JSON_DIFF, Adapter, Comparing, JSONObject
from shim.types import BACKENDS, Backend, Comparator

GO_PREFIX = "/_go"
_PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)(:path)?\}")
DEFAULT_FALLBACK_ON = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Face:
    """One dialect's path template and methods for an endpoint."""

    template: str
    methods: frozenset[str]
    pattern: re.Pattern[str] | None  # None: a static path, matched by dict lookup

    def render(self, params: Mapping[str, str]) -> str:
        """The concrete path for `params` (raw, as matched)."""
        if self.pattern is None:
            return self.template
        return _PARAMETER.sub(lambda m: params[m.group(1)], self.template)


@dataclass(frozen=True, slots=True)
class ParityPolicy:
    """How shadow answers are compared and judged for one endpoint (`[routes.X.parity]`)."""

    comparator: Comparator = "json"
    min_samples: int = 20
    min_cosine: float = 0.9999
    min_recall: float = 0.95
    tolerance: float = 1e-6
    ignore: tuple[str, ...] = ()
    max_failure_ratio: float = 0.0
    sample_rate: float = 1.0
    noise_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """When the guard rolls an endpoint back to Rust (`[routes.X.guard]`)."""

    enabled: bool = True
    window_seconds: float = 30.0
    min_requests: int = 20
    max_error_ratio: float = 0.05
    max_p99_seconds: float | None = None
    max_parity_failure_ratio: float = 0.05
    trip_after: int = 2


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: its faces, adapter and policy."""

    name: str
    faces: Mapping[Backend, Face]
    default: Backend
    adapter: Adapter | None
    options: Any
    idempotent_methods: frozenset[str]
    connect_timeout: float | None
    read_timeout: float | None
    total_timeout: float | None = None
    queue_timeout: float | None = None  # wait budget for a slot (shim/admission.py)
    parity: ParityPolicy = ParityPolicy()
    guard: GuardPolicy = GuardPolicy()
    fallback_on: frozenset[int] = DEFAULT_FALLBACK_ON
    json_body: bool = True  # request bodies are JSON, capped by max_json_bytes; else bytes

    @property
    def go_only(self) -> bool:
        return "rust" not in self.faces

    @property
    def shadowable(self) -> bool:
        """Both backends exist and some request may be mirrored."""
        return not self.go_only and bool(self.idempotent_methods)

    def may_shadow(self, method: str) -> bool:
        return method in self.idempotent_methods

    @property
    def repeat_rule(self) -> str | None:
        """The adapter's rule for which requests may be sent twice (None: all of an
        idempotent method); only with one is a body parsed to ask `may_repeat`."""
        return None if self.adapter is None else self.adapter.repeat_rule

    def may_repeat(self, request: Any, client: Backend) -> bool:
        """The adapter's judgement of one parsed request (its method already idempotent)."""
        if self.adapter is None or self.adapter.repeat_rule is None:
            return True
        return self.adapter.may_repeat(request, client=client, options=self.options)

    @property
    def comparing(self) -> Comparing:
        return JSON_DIFF if self.adapter is None else self.adapter.comparing

    def samples(self, client: Backend, count: int) -> list[JSONObject]:
        """The adapter's probe requests in `client`'s dialect ([] without an adapter)."""
        if self.adapter is None:
            return []
        return self.adapter.samples(count, client=client, options=self.options)

    def needs_rewrite(self, client: Backend, backend: Backend) -> bool:
        """The one decision between streaming bytes untouched and parsing the body."""
        if self.adapter is None:
            return False
        return self.adapter.needs_rewrite(client=client, backend=backend, options=self.options)

    def losses(self, client: Backend, backend: Backend) -> str | None:
        if self.adapter is None:
            return None
        return self.adapter.losses(client=client, backend=backend, options=self.options)

    def describe_loss(self, loss: str) -> str:
        """What an X-Shim-Lossy value means, in the adapter's words (else the value)."""
        return self.adapter.loss_descriptions.get(loss, loss) if self.adapter else loss


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request path resolved to an endpoint and the dialect the client speaks."""

    route: Route
    client: Backend
    params: Mapping[str, str]

    @property
    def face(self) -> Face:
        return self.route.faces[self.client]


@dataclass(frozen=True)
class RouteTable:
    """All routes, with indexes built once for matching."""

    routes: Mapping[str, Route]
    _static: Mapping[tuple[str, Backend], Route] = field(repr=False)
    _patterns: tuple[tuple[re.Pattern[str], Backend, Route], ...] = field(repr=False)

    def match(self, raw_path: str) -> RouteMatch | None:
        """Resolve a raw request path; Go faces match bare and under `/_go`."""
        if raw_path.startswith(GO_PREFIX + "/"):
            return self._match(raw_path[len(GO_PREFIX) :], ("go",))
        return self._match(raw_path, BACKENDS)

    def _match(self, path: str, dialects: tuple[Backend, ...]) -> RouteMatch | None:
        for dialect in dialects:
            route = self._static.get((path, dialect))
            if route is not None:
                return RouteMatch(route, dialect, {})
        for pattern, dialect, route in self._patterns:
            if dialect in dialects and (found := pattern.fullmatch(path)):
                return RouteMatch(route, dialect, found.groupdict())
        return None

    def __getitem__(self, name: str) -> Route:
        return self.routes[name]

    def __contains__(self, name: object) -> bool:
        return name in self.routes
