"""The drift catalogue's proposals: which one-sided field carries another's values, as jq.

Shadow comparisons keep the values of fields seen on one side only, as columns
(`$.results[].index` = `[3, 0, 7]`, see `shim.parity.compare.leaf_columns`). Where a column of the
side the client expects (the *target*, the dialect the answers were compared in) carries the
same values as a column of the other side (the *source*), under a relation the shim can test
on every sample, that is a mapping an operator can paste into the route table:

- equal (numbers within the route's tolerance), `$.a = $.b`;
- one minus (`$.score = 1 - $.distance`);
- the same elements in another order, when sorting the target by one of its own fields
  gives them back (`sort_by(.relevance_score) | reverse`).

    >>> sample = {"compared_in": "rust", "only_in": {"rust": ["$.results"], "go": ["$.hits"]},
    ...           "one_sided": {"rust": {"$.results[].id": ["a", "b"]},
    ...                         "go": {"$.hits[].id": ["a", "b"]}}}
    >>> propose([sample])[0].expression
    'del(.hits) + {results: [.hits[] | {id: .id}]}'

Each sample proposes a whole expression; the catalogue shows, per program, the expression
most samples agree on and how many do. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Side = Literal["rust", "go"]
Relation = Literal["equal", "one_minus"]
RELATIONS: tuple[Relation, ...] = ("equal", "one_minus")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SAMPLES = 100  # the latest samples with one-sided fields: the parity view stays fast


@dataclass
class Proposal:
    """A jq expression for `program`, and how many samples it reproduces the target in."""

    program: str
    expression: str
    support: int
    samples: int
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "expression": self.expression,
            "support": self.support,
            "samples": self.samples,
            "mapped": self.mapped,
            "unmapped": self.unmapped,
        }


@dataclass(frozen=True)
class Leaf:
    """How one target column is made from one source column."""

    target: str  # the column, e.g. ".relevance_score" within its group
    source: str
    relation: Relation


@dataclass
class Group:
    """Target columns under one list (`$.results[]`) or the scalars (`""`), and their source."""

    target: str
    source: str
    leaves: list[Leaf]
    sort: tuple[str, bool] | None = None  # (target leaf, descending)


def propose(records: Iterable[Mapping[str, Any]], *, tolerance: float = 1e-6) -> list[Proposal]:
    """One proposal per program that samples suggest one for, best supported first (from
    the latest `MAX_SAMPLES` samples that show one-sided fields, oldest first)."""
    votes: dict[str, Counter[str]] = {}
    details: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    seen: Counter[str] = Counter()
    drifting = [record for record in records if record.get("one_sided")][-MAX_SAMPLES:]
    for record in drifting:
        one_sided = record["one_sided"]
        target: Side = "go" if record.get("compared_in") == "go" else "rust"
        source: Side = "rust" if target == "go" else "go"
        if not one_sided.get(target) or not one_sided.get(source):
            continue
        program = f"{source}_answer_to_{target}"
        seen[program] += 1
        found = propose_one(
            one_sided[target],
            one_sided[source],
            source_roots=record.get("only_in", {}).get(source, []),
            tolerance=tolerance,
        )
        if found is None:
            continue
        expression, mapped, unmapped = found
        votes.setdefault(program, Counter())[expression] += 1
        details[program, expression] = (mapped, unmapped)
    proposals = []
    for program, counter in votes.items():
        expression, support = counter.most_common(1)[0]
        mapped, unmapped = details[program, expression]
        proposals.append(Proposal(program, expression, support, seen[program], mapped, unmapped))
    proposals.sort(key=lambda p: (-p.support / p.samples, p.program))
    return proposals


def propose_one(
    target: Mapping[str, list[Any]],
    source: Mapping[str, list[Any]],
    *,
    source_roots: Iterable[str],
    tolerance: float,
) -> tuple[str, list[str], list[str]] | None:
    """One sample's expression (with what it maps and what it leaves), or None."""
    target_groups, source_groups = _groups(target), _groups(source)
    groups = []
    for name, columns in target_groups.items():
        group = _match_group(name, columns, source_groups, tolerance)
        if group is not None:
            groups.append(group)
    if not groups:
        return None
    used = {
        f"{group.source}{leaf.source}" if group.source else leaf.source
        for group in groups
        for leaf in group.leaves
    }
    made = {
        f"{group.target}{leaf.target}" if group.target else leaf.target
        for group in groups
        for leaf in group.leaves
    }
    consumed = [
        root
        for root in sorted(set(source_roots))
        if (under := [c for c in source if _under(c, root)]) and all(c in used for c in under)
    ]
    mapped = [_describe(group, leaf) for group in groups for leaf in group.leaves]
    mapped += [
        f"`{group.target}` sorted by `{group.sort[0]}`{' descending' if group.sort[1] else ''}"
        for group in groups
        if group.sort
    ]
    unmapped = sorted(set(target) - made) + sorted(set(source) - used)
    return _render(groups, consumed), mapped, unmapped


def _groups(columns: Mapping[str, list[Any]]) -> dict[str, dict[str, list[Any]]]:
    """Columns by the list they sit in: `$.results[].index` -> `$.results[]` / `.index`;
    a column outside any list goes to `""` whole. Lists within lists are left out."""
    groups: dict[str, dict[str, list[Any]]] = {}
    for path, values in columns.items():
        if path.count("[]") > 1 or not isinstance(values, list) or not values:
            continue
        if "[]" in path:
            head, _, leaf = path.partition("[]")
            groups.setdefault(head + "[]", {})[leaf] = values
        else:
            groups.setdefault("", {})[path] = values
    return groups


def _match_group(
    name: str,
    columns: Mapping[str, list[Any]],
    sources: Mapping[str, Mapping[str, list[Any]]],
    tolerance: float,
) -> Group | None:
    """The source group that explains most of these target columns, in order or sorted."""
    candidates = [name] if not name else [s for s in sources if s]
    best: Group | None = None
    for source_name in candidates:
        source_columns = sources.get(source_name, {})
        if not source_columns:
            continue
        group = _align(name, source_name, columns, source_columns, tolerance)
        if group is not None and (best is None or len(group.leaves) > len(best.leaves)):
            best = group
    return best


def _align(
    name: str,
    source_name: str,
    targets: Mapping[str, list[Any]],
    sources: Mapping[str, list[Any]],
    tolerance: float,
) -> Group | None:
    in_order: list[Leaf] = []
    reordered: list[Leaf] = []
    mapped_sources = {
        (source_leaf, relation): mapped
        for source_leaf, source_values in sources.items()
        for relation in RELATIONS
        if (mapped := _apply(relation, source_values)) is not None
    }
    sorted_sources: dict[tuple[str, Relation], list[Any]] = {}
    for leaf, values in targets.items():
        ranked = []
        sorted_values: list[Any] | None = None
        for (source_leaf, relation), mapped in mapped_sources.items():
            if len(mapped) != len(values):
                continue
            rank = RELATIONS.index(relation)
            if _same(values, mapped, tolerance):
                ranked.append((0, rank, -_likeness(leaf, source_leaf), source_leaf, relation))
                continue
            if not name:
                continue  # scalars have no order to restore
            if sorted_values is None:
                sorted_values = _sorted(values)
            if (source_leaf, relation) not in sorted_sources:
                sorted_sources[source_leaf, relation] = _sorted(mapped)
            if _same(sorted_values, sorted_sources[source_leaf, relation], tolerance):
                ranked.append((1, rank, -_likeness(leaf, source_leaf), source_leaf, relation))
        if ranked:
            order, _, _, source_leaf, relation = min(ranked)
            (reordered if order else in_order).append(Leaf(leaf, source_leaf, relation))
    if not reordered:
        return Group(name, source_name, in_order) if in_order else None
    leaves = in_order + reordered
    sort = _sort_that_restores(targets, sources, leaves, tolerance)
    if sort is None:
        return Group(name, source_name, in_order) if in_order else None
    return Group(name, source_name, leaves, sort)


def _sort_that_restores(
    targets: Mapping[str, list[Any]],
    sources: Mapping[str, list[Any]],
    leaves: list[Leaf],
    tolerance: float,
) -> tuple[str, bool] | None:
    """A target leaf such that the mapped rows, sorted by it (as jq's sort_by, or sort_by
    then reverse), are the target rows."""
    columns = [_apply(leaf.relation, sources[leaf.source]) or [] for leaf in leaves]
    rows = [
        {leaf.target: value for leaf, value in zip(leaves, row, strict=True)}
        for row in zip(*columns, strict=True)
    ]
    for key in sorted(leaf.target for leaf in leaves):
        if not all(_sortable(row[key]) for row in rows):
            continue
        for descending in (True, False):
            ordered = sorted(rows, key=lambda row: row[key])
            if descending:
                ordered.reverse()
            if all(
                _same(targets[leaf.target], [row[leaf.target] for row in ordered], tolerance)
                for leaf in leaves
            ):
                return key, descending
    return None


def _apply(relation: Relation, values: list[Any]) -> list[Any] | None:
    if relation == "equal":
        return values
    if all(_is_number(v) for v in values):
        return [1 - v for v in values]
    return None


def _same(a: list[Any], b: list[Any], tolerance: float) -> bool:
    return len(a) == len(b) and all(_equal(x, y, tolerance) for x, y in zip(a, b, strict=True))


def _equal(a: Any, b: Any, tolerance: float) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    return type(a) is type(b) and a == b


def _sorted(values: list[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (type(v).__name__, v if _sortable(v) else repr(v)))


def _sortable(value: Any) -> bool:
    return _is_number(value) or isinstance(value, str)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # not bool (a subclass of int)


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _under(column: str, root: str) -> bool:
    return column == root or column.startswith((root + ".", root + "[]"))


def _describe(group: Group, leaf: Leaf) -> str:
    target = f"{group.target}{leaf.target}" if group.target else leaf.target
    source = f"{group.source}{leaf.source}" if group.source else leaf.source
    return f"`{target}` = `{'1 - ' if leaf.relation == 'one_minus' else ''}{source}`"


# -- jq ------------------------------------------------------------------------------------


def _render(groups: list[Group], consumed: list[str]) -> str:
    """`del(<consumed source fields>) + {<target fields>}`; a list both sides share is
    rewritten in place (`.items |= map(...)`)."""
    tree: dict[str, Any] = {}
    updates = []
    for group in groups:
        if not group.target:
            for leaf in group.leaves:
                _place(tree, _keys(leaf.target), _value(_jq_path(leaf.source), leaf.relation))
            continue
        element = _element(group)
        if group.target == group.source:
            path = _jq_path(group.target[:-2])
            dropped = [_jq_path("$" + leaf.source) for leaf in group.leaves if leaf.source]
            edit = f"del({', '.join(dropped)}) + {element}" if dropped else element
            updates.append(f"{path} |= map({edit}){_sort_suffix(group)}")
            continue
        listed = f"[{_jq_path(group.source[:-2])}[] | {element}]{_sort_suffix(group)}"
        _place(tree, _keys(group.target[:-2]), listed)
    consumed_paths = [_jq_path(root) for root in consumed if "[]" not in root]
    parts = []
    if tree:
        merge = "*" if any(isinstance(v, dict) for v in tree.values()) else "+"
        base = f"del({', '.join(consumed_paths)})" if consumed_paths else "."
        parts.append(f"{base} {merge} {_object(tree)}")
    parts += sorted(updates)
    return " | ".join(parts)


def _element(group: Group) -> str:
    """What one element of the target list is made of, from one element of the source's."""
    if len(group.leaves) == 1 and not group.leaves[0].target:
        leaf = group.leaves[0]
        return _value("." + leaf.source.lstrip(".") if leaf.source else ".", leaf.relation)
    tree: dict[str, Any] = {}
    for leaf in group.leaves:
        _place(tree, _keys("$" + leaf.target), _value(_jq_path("$" + leaf.source), leaf.relation))
    return _object(tree)


def _sort_suffix(group: Group) -> str:
    if group.sort is None:
        return ""
    key, descending = group.sort
    by = "sort" if not key else f"sort_by({_jq_path('$' + key)})"
    return f" | {by}" + (" | reverse" if descending else "")


def _value(path: str, relation: Relation) -> str:
    return path if relation == "equal" else f"(1 - {path})"


def _place(tree: dict[str, Any], keys: list[str], value: str) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _object(tree: Mapping[str, Any]) -> str:
    fields = []
    for key, value in sorted(tree.items()):  # one text per mapping, whatever the key order
        name = key if _IDENTIFIER.fullmatch(key) else json.dumps(key)
        fields.append(f"{name}: {_object(value) if isinstance(value, dict) else value}")
    return "{" + ", ".join(fields) + "}"


def _keys(path: str) -> list[str]:
    """`$.a.b` -> ["a", "b"] (the catalogue's paths: `$`, then `.key` segments)."""
    return [key for key in path.removeprefix("$").split(".") if key]


def _jq_path(path: str) -> str:
    """`$.a.b-c` -> `.a."b-c"`; `$` -> `.`."""
    keys = _keys(path)
    if not keys:
        return "."
    return "".join(f".{k}" if _IDENTIFIER.fullmatch(k) else f".{json.dumps(k)}" for k in keys)
