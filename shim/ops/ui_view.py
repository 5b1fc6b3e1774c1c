"""The operator page's model: what each row and the evidence panel show, decided here (pure:
everything is read by `shim.ops.ui` first), so the templates only lay it out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shim.cutover.workers import WorkerStatus
from shim.ops.views import last_changes
from shim.routes import ParityPolicy, RouteTable
from shim.types import BACKENDS, Outcome

REQUEST_SHOWN_CHARS = 600
GUARD_LABELS: dict[str, str] = {
    "off": "off",
    "idle": "idle (rust)",
    "on": "watching",
    Outcome.PASS: "watching · ok",
    Outcome.INCONCLUSIVE: "watching · too few",
    Outcome.FAIL: "FAILING",
}


def histogram_svg(
    values: Sequence[float], *, edges: Sequence[float], threshold: float, labels: Sequence[str]
) -> str:
    """A small bar chart of `values` binned by `edges` (one label per edge), the threshold
    as a red line; bins wholly below it are drawn as failing. Only numbers and the labels
    given here reach the markup."""
    counts = [0] * (len(edges) - 1)
    threshold = round(threshold, 9)
    for value in values:
        for index in range(len(counts)):
            if value < edges[index + 1] or index == len(counts) - 1:
                counts[index] += 1
                break
    width, height, pad = 360, 90, 14
    bar = (width - 2 * pad) / len(counts)
    top = max(counts) or 1
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height + 28}" role="img" '
        f'aria-label="distribution of {len(values)} comparisons">'
    ]
    for index, count in enumerate(counts):
        h = (height - 10) * count / top
        x, y = pad + index * bar, height - h
        failing = round(edges[index + 1], 9) <= threshold
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            f'class="{"bad" if failing else "good"}"><title>{count}</title></rect>'
        )
        if count:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y - 2:.1f}" class="n">{count}</text>')
    # The threshold line sits where the threshold falls inside its bin (rounded: 1 - 0.9999
    # is not exactly 1e-4 in floating point).
    threshold = round(threshold, 9)
    inside = next((i for i in range(len(counts)) if threshold < edges[i + 1]), len(counts) - 1)
    low, high = edges[inside], edges[inside + 1]
    x = pad + (inside + max(0.0, min(1.0, (threshold - low) / (high - low)))) * bar
    parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" class="threshold"/>')
    for index, label in enumerate(labels[: len(edges)]):
        x = pad + index * bar
        parts.append(f'<text x="{x:.1f}" y="{height + 14}" class="axis">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def evidence(
    route_name: str,
    verdict: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    policy: ParityPolicy,
) -> dict[str, Any]:
    """What the evidence panel shows for one endpoint: its chart, worst samples, drift."""
    comparisons = [
        r
        for r in records
        if r.get("endpoint") == route_name and r.get("kind") in ("shadow", "probe")
    ]
    chart = None
    if verdict["comparator"] == "cosine":
        cosines = [
            r["metrics"]["min_cosine"] for r in comparisons if "min_cosine" in r.get("metrics", {})
        ]
        threshold = verdict["noise"].get("effective_min_cosine") or policy.min_cosine
        # The distance from identical, 1 - cos, on a log scale: 1e-7 .. 1 in decades.
        distances = [-math.log10(max(1e-9, 1 - c)) for c in cosines]
        edges = [0, 1, 2, 3, 4, 5, 6, 7, 99]
        chart = {
            "title": "lowest cosine per comparison (log scale of 1−cos: right is identical)",
            "svg": histogram_svg(
                distances,
                edges=edges,
                threshold=-math.log10(max(1e-9, 1 - threshold)),
                labels=["0", "0.9", "0.99", "0.999", "0.9999", "0.99999", "1−1e-6", "1−1e-7", ""],
            ),
            "count": len(cosines),
        }
    elif verdict["comparator"] == "ranking":
        recalls = [r["metrics"]["recall"] for r in comparisons if "recall" in r.get("metrics", {})]
        threshold = verdict["noise"].get("effective_min_recall") or policy.min_recall
        chart = {
            "title": "recall@k of ids per comparison",
            "svg": histogram_svg(
                recalls,
                edges=[0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0000001],
                threshold=threshold,
                labels=["0", "0.5", "0.8", "0.9", "0.95", "0.99", "1"],
            ),
            "count": len(recalls),
        }
    worst = []
    for sample in verdict["worst"]:
        request = str(sample.get("request") or "")
        worst.append(
            {
                **sample,
                "request": request[:REQUEST_SHOWN_CHARS]
                + ("…" if len(request) > REQUEST_SHOWN_CHARS else ""),
            }
        )
    drift = sorted(set(verdict["drift"]["rust"]) | set(verdict["drift"]["go"]))
    return {
        "chart": chart,
        "worst": worst,
        "drift": [
            (p, verdict["drift"]["rust"].get(p), verdict["drift"]["go"].get(p)) for p in drift
        ],
    }


# -- the page's model: pure -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the page is built from, read once per render (see `Reader`)."""

    flags: dict[str, Any]
    parity: dict[str, Any]
    parity_records: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    workers: list[WorkerStatus]
    requests: dict[tuple[str, ...], float]  # (endpoint, backend) -> count in the split window
    split_seconds: float | None  # None: counted since the shim started
    fallbacks: dict[tuple[str, ...], float]
    guard: dict[str, tuple[str, str]]  # endpoint -> (status, reason) of this worker's guard


def rows_view(routes: RouteTable, inputs: Inputs) -> list[dict[str, Any]]:
    """One row per endpoint: everything the table shows, decided here, not in the template."""
    newest = last_changes(inputs.audit)
    guard_rollbacks = {r["endpoint"]: r for r in inputs.audit if r.get("actor") == "guard"}
    rows = []
    for name, flag in inputs.flags["endpoints"].items():
        route = routes[name]
        verdict = inputs.parity["endpoints"].get(name)
        served = {b: inputs.requests.get((name, b), 0.0) for b in BACKENDS}
        total = sum(served.values())
        generation = newest.get(name, 0)
        applied = sum(1 for w in inputs.workers if w.generation >= generation)
        policy = route.parity
        threshold = None
        if verdict is not None:
            noise = verdict["noise"]
            if verdict["comparator"] == "cosine":
                threshold = f"cos ≥ {noise.get('effective_min_cosine') or policy.min_cosine:g}"
            elif verdict["comparator"] == "ranking":
                threshold = f"recall ≥ {noise.get('effective_min_recall') or policy.min_recall:g}"
            else:
                threshold = "JSON equal"
            if policy.max_failure_ratio:
                threshold += f", ≤{policy.max_failure_ratio:.0%} may fail"
            else:
                threshold += ", none may fail"
        rows.append(
            {
                "name": name,
                "flag": flag,
                "go_only": route.go_only,
                "shadowable": route.shadowable,
                "observed_go": round(100 * served["go"] / total) if total else None,
                "observed_total": int(total),
                "verdict": verdict,
                "detail": verdict["headline"].split(" ", 1)[1] if verdict else "",
                "min_samples": policy.min_samples,
                "threshold": threshold,
                "applied": applied,
                "workers": len(inputs.workers),
                "fallbacks": int(sum(v for k, v in inputs.fallbacks.items() if k[0] == name)),
                "guard": inputs.guard.get(name, ("off", "")),
                "guard_label": GUARD_LABELS.get(inputs.guard.get(name, ("off", ""))[0], "?"),
                "guard_rollback": guard_rollbacks.get(name),
            }
        )
    return rows
