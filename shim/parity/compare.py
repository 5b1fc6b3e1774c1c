"""Comparing two backends' answers to one request, both already in one dialect.

Pure functions (no I/O): the shadow task and the on-demand probe call them, the parity
store keeps what they return. Three comparators, each endpoint's named by its adapter
(`Adapter.comparing`, with the fields it reads):

- `cosine` (embed): same count and dimension, per-vector cosine (magnitude-invariant);
- `ranking` (search, retrieve): recall@k of ids, rank agreement, score drift;
- `json` (everything else): a structural diff with numeric tolerance and ignored paths.

Every comparator also reports the fields seen on one side only (the drift catalogue), with
their values as columns (`$.results[].index`: one value per element), so the catalogue can
tell which field on the other side carries the same values (`shim.parity.drift`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from adapters.vectors import row_cosines
from shim.stats import percentiles
from shim.types import Comparator

Side = Literal["rust", "go"]
MAX_DIFFERENCES = 20
MAX_COLUMN_VALUES = 64  # a longer one-sided column is not kept (records stay small)
MAX_COLUMNS = 32  # per side and comparison


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where the answers differ; `path` is a JSON path such as `$.rows[3][1]`."""

    path: str
    kind: str  # missing_in_rust, missing_in_go, type_changed, value_changed, length, status
    rust: Any = None
    go: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "rust": _short(self.rust),
            "go": _short(self.go),
        }


@dataclass(slots=True)
class Comparison:
    """What one comparison found; `metrics` holds cosine / recall figures where they apply."""

    comparator: Comparator
    differences: list[Difference] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    only_in: dict[Side, list[str]] = field(default_factory=lambda: {"rust": [], "go": []})
    missed_ids: list[str] = field(default_factory=list)
    one_sided: dict[Side, dict[str, list[Any]]] = field(
        default_factory=lambda: {"rust": {}, "go": {}}
    )
    judged: str | None = None  # the list the metric judged (the vectors, the hits)

    def keep_one_sided(self, side: Side, path: str, value: Any) -> None:
        """The leaf values of a field seen on `side` only, appended to its columns."""
        columns = self.one_sided[side]
        for column, values in leaf_columns(value, _shape_path(path)).items():
            if column in columns or len(columns) < MAX_COLUMNS:
                columns.setdefault(column, []).extend(values)

    def to_dict(self) -> dict[str, Any]:
        kept = {
            side: {
                path: [_plain(v) for v in values]
                for path, values in columns.items()
                if len(values) <= MAX_COLUMN_VALUES
            }
            for side, columns in self.one_sided.items()
        }
        return {
            "comparator": self.comparator,
            "differences": [d.to_dict() for d in self.differences[:MAX_DIFFERENCES]],
            "difference_count": len(self.differences),
            "metrics": self.metrics,
            "only_in": {side: sorted(set(paths)) for side, paths in self.only_in.items()},
            "missed_ids": self.missed_ids[:MAX_DIFFERENCES],
            **({"one_sided": kept} if kept["rust"] or kept["go"] else {}),
        }


def leaf_columns(value: Any, path: str) -> dict[str, list[Any]]:
    """`{"results": [{"index": 0}, {"index": 2}]}` at `$` -> `{"$.results[].index": [0, 2]}`.

    Objects are walked; a list gives one column per scalar field of its objects (or one
    column of its scalars, `$.tags[]`); what nests deeper inside a list, and matrices, is
    left out (no mapping is proposed there, and records stay small).
    """
    if isinstance(value, dict):
        columns: dict[str, list[Any]] = {}
        for key, item in value.items():
            columns.update(leaf_columns(item, f"{path}.{key}"))
        return columns
    if isinstance(value, np.ndarray):  # an adapter's matrix: a column only when it is 1-D
        return {} if value.ndim != 1 or "[]" in path else {f"{path}[]": value.tolist()}
    if isinstance(value, list):
        if "[]" in path or not value:
            return {}
        if all(isinstance(item, dict) for item in value):
            keys = dict.fromkeys(key for item in value for key in item)
            columns = {}
            for key in keys:
                cells = [item.get(key) for item in value]
                if not any(isinstance(cell, dict | list) for cell in cells):
                    columns[f"{path}[].{key}"] = cells
            return columns
        if any(isinstance(item, dict | list) for item in value):
            return {}
        return {f"{path}[]": list(value)}
    return {path: [value]}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def compare(
    comparator: Comparator,
    rust: Any,
    go: Any,
    *,
    tolerance: float = 1e-6,
    ignore: Iterable[str] = (),
    field: str | None = None,
    score: str | None = None,
) -> Comparison:
    """Compare two answers in one dialect with the endpoint's comparator.

    `field` is the list the metric reads (cosine: the vectors, ranking: the hits), `score`
    each hit's number (ranking), as the adapter names them (`Adapter.comparing`); left out,
    they are embed's and search's Rust fields (`embeddings`; `results`, `score`).
    """
    ignored = tuple(ignore)
    if comparator == "cosine":
        return _compare_vectors(rust, go, field or "embeddings", tolerance, ignored)
    if comparator == "ranking":
        fields = (field or "results", score or "score")
        return _compare_rankings(rust, go, fields, tolerance, ignored)
    result = Comparison(comparator)
    diff_json(rust, go, "$", result, tolerance=tolerance, ignore=ignored)
    return result


def compare_bytes(rust: bytes, go: bytes) -> Comparison:
    """For routes without an adapter: byte-equal or not."""
    result = Comparison("bytes")
    if rust != go:
        result.differences.append(Difference("$", "value_changed", len(rust), len(go)))
    return result


def status_difference(rust_status: int, go_status: int) -> Comparison:
    """A status mismatch (e.g. 200 vs 404) is always a difference."""
    result = Comparison("json")
    result.differences.append(Difference("$status", "status", rust_status, go_status))
    return result


def _compare_vectors(
    rust: Any, go: Any, vectors_field: str, tolerance: float, ignore: tuple[str, ...]
) -> Comparison:
    result = Comparison("cosine", judged=vectors_field)
    a = np.asarray(rust.get(vectors_field, []), dtype=np.float64)
    b = np.asarray(go.get(vectors_field, []), dtype=np.float64)
    if a.shape != b.shape:
        result.differences.append(
            Difference(f"$.{vectors_field}", "length", list(a.shape), list(b.shape))
        )
        result.metrics["min_cosine"] = 0.0
    elif a.size:
        cosines = row_cosines(a, b)
        p50, p01 = percentiles(cosines, (50, 1))
        result.metrics.update(
            min_cosine=float(cosines.min()),
            p50_cosine=p50,
            p01_cosine=p01,
            vectors=float(len(cosines)),
        )
        worst = int(cosines.argmin())
        result.metrics["worst_index"] = float(worst)
    rest_ignore = (*ignore, f"$.{vectors_field}")
    diff_json(rust, go, "$", result, tolerance=tolerance, ignore=rest_ignore)
    return result


def _compare_rankings(
    rust: Any, go: Any, fields: tuple[str, str], tolerance: float, ignore: tuple[str, ...]
) -> Comparison:
    hits_field, score_field = fields
    result = Comparison("ranking", judged=hits_field)
    rust_hits = [h for h in rust.get(hits_field, []) if isinstance(h, dict)]
    go_hits = [h for h in go.get(hits_field, []) if isinstance(h, dict)]
    rust_ids = [h.get("id") for h in rust_hits]
    go_ids = [h.get("id") for h in go_hits]
    common = set(rust_ids) & set(go_ids)
    k = max(len(rust_ids), 1)
    result.metrics["recall"] = len(common) / k if rust_ids else (1.0 if not go_ids else 0.0)
    same_rank = sum(1 for a, b in zip(rust_ids, go_ids, strict=False) if a == b)
    result.metrics["rank_agreement"] = same_rank / k if rust_ids else 1.0
    rust_scores: dict[Any, Any] = {h.get("id"): h.get(score_field) for h in rust_hits}
    go_scores: dict[Any, Any] = {h.get("id"): h.get(score_field) for h in go_hits}
    drifts = [
        abs(float(rust_scores[i]) - float(go_scores[i]))
        for i in common
        if _is_number(rust_scores[i]) and _is_number(go_scores[i])
    ]
    result.metrics["score_drift"] = max(drifts, default=0.0)
    result.missed_ids = [str(i) for i in rust_ids if i not in common]
    extra = [str(i) for i in go_ids if i not in set(rust_ids)]
    for missing in result.missed_ids:
        result.differences.append(
            Difference(f"$.{hits_field}[id={missing}]", "missing_in_go", missing, None)
        )
    for surplus in extra:
        result.differences.append(
            Difference(f"$.{hits_field}[id={surplus}]", "missing_in_rust", None, surplus)
        )
    if result.metrics["score_drift"] > tolerance:
        result.differences.append(
            Difference(
                f"$.{hits_field}[].{score_field}",
                "value_changed",
                None,
                result.metrics["score_drift"],
            )
        )
    # Field drift inside hits: compare the sets of keys each side's hits carry.
    rust_keys = set().union(*(h.keys() for h in rust_hits)) if rust_hits else set()
    go_keys = set().union(*(h.keys() for h in go_hits)) if go_hits else set()
    one_sided: tuple[tuple[Side, list[Any], set[Any]], ...] = (
        ("rust", rust_hits, rust_keys - go_keys),
        ("go", go_hits, go_keys - rust_keys),
    )
    for side, hits, only in one_sided:
        for key in sorted(only):
            result.only_in[side].append(f"$.{hits_field}[].{key}")
            result.one_sided[side][f"$.{hits_field}[].{key}"] = [h.get(key) for h in hits]
    diff_json(rust, go, "$", result, tolerance=tolerance, ignore=(*ignore, f"$.{hits_field}"))
    return result


def diff_json(
    rust: Any,
    go: Any,
    path: str,
    result: Comparison,
    *,
    tolerance: float,
    ignore: tuple[str, ...],
) -> None:
    """Walk both documents; record missing, extra, type-changed and value-changed paths."""
    if _ignored(path, ignore):
        return
    if isinstance(rust, dict) and isinstance(go, dict):
        for key in rust.keys() | go.keys():
            child = f"{path}.{key}"
            if _ignored(child, ignore):
                continue
            if key not in go:
                result.differences.append(Difference(child, "missing_in_go", rust[key], None))
                result.only_in["rust"].append(_shape_path(child))
                result.keep_one_sided("rust", child, rust[key])
            elif key not in rust:
                result.differences.append(Difference(child, "missing_in_rust", None, go[key]))
                result.only_in["go"].append(_shape_path(child))
                result.keep_one_sided("go", child, go[key])
            else:
                diff_json(rust[key], go[key], child, result, tolerance=tolerance, ignore=ignore)
        return
    if isinstance(rust, list | np.ndarray) and isinstance(go, list | np.ndarray):
        if len(rust) != len(go):
            result.differences.append(Difference(path, "length", len(rust), len(go)))
        for index, (a, b) in enumerate(zip(rust, go, strict=False)):
            diff_json(a, b, f"{path}[{index}]", result, tolerance=tolerance, ignore=ignore)
        return
    if _is_number(rust) and _is_number(go):
        if not math.isclose(float(rust), float(go), rel_tol=tolerance, abs_tol=tolerance):
            result.differences.append(Difference(path, "value_changed", rust, go))
        return
    if type(rust) is not type(go):
        result.differences.append(Difference(path, "type_changed", rust, go))
    elif rust != go:
        result.differences.append(Difference(path, "value_changed", rust, go))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    return any(_path_pattern(pattern).fullmatch(path) for pattern in patterns)


@functools.lru_cache(maxsize=256)
def _path_pattern(pattern: str) -> re.Pattern[str]:
    """`$.rows[*][1]`: `[*]` is any index, `*` any one key; everything else is literal."""
    regex = ""
    for token in re.split(r"(\[\*\]|\*)", pattern):
        if token == "[*]":
            regex += r"\[\d+\]"
        elif token == "*":
            regex += r"[^.\[]+"
        else:
            regex += re.escape(token)
    return re.compile(regex)


def _shape_path(path: str) -> str:
    """`$.rows[3].x` -> `$.rows[].x`: the catalogue lists fields, not positions."""
    out, depth = [], 0
    for char in path:
        if char == "[":
            depth += 1
            out.append("[]")
        elif char == "]":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def _short(value: Any) -> Any:
    """A value small enough to keep in a parity record."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "…"


BLOCKING_KINDS = frozenset({"value_changed", "type_changed", "length", "status", "error"})


def blocking(comparison: Comparison) -> list[Difference]:
    """Differences that fail a comparison (metrics aside).

    For `json` and `bytes` every difference counts. For `cosine` and `ranking` the metric
    decides about vectors and hits; fields seen on one side only go to the drift catalogue,
    and only changed values of shared fields count.
    """
    if comparison.comparator in ("json", "bytes"):
        return list(comparison.differences)
    hits = f"$.{comparison.judged}"
    return [
        d
        for d in comparison.differences
        if d.kind in BLOCKING_KINDS
        and not (comparison.comparator == "ranking" and d.path.startswith(hits))
    ]
