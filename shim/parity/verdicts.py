"""Parity samples on disk, the verdicts drawn from them, and the reports operators read.

Each worker appends one JSON line per comparison to `SHIM_STATE_DIR/parity/<pid>.jsonl`
(its own file: no lock, no interleaving), rotated to `.1` past `MAX_FILE_BYTES`. A verdict
per endpoint is drawn at read time from the samples in the window, against the thresholds
of the route table and the noise floor learnt from requests sent twice to one backend.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shim.jsonl import append_lines, read_lines, read_records
from shim.parity.drift import Proposal, propose
from shim.routes import Route, RouteTable
from shim.stats import percentiles
from shim.timestamps import iso_utc
from shim.types import Outcome

PARITY_DIR = "parity"
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_SAMPLES_PER_ENDPOINT = 10_000
REQUEST_EXCERPT_BYTES = 2048
PASS, FAIL, INCONCLUSIVE = Outcome.PASS, Outcome.FAIL, Outcome.INCONCLUSIVE
MARK = {PASS: "✅", FAIL: "❌", INCONCLUSIVE: "⏳"}


class ParityStore:
    """The parity samples of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / PARITY_DIR
        self.unreadable = 0  # lines that were not samples, in the last `samples()`

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one sample to this process's file (rotating it when large)."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]] | list[Mapping[str, Any]]) -> None:
        """Append samples to this process's file in one write (rotating it when large)."""
        if not records:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}.jsonl"
        lines = b"".join(
            orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for record in records
        )
        if append_lines(path, lines) > MAX_FILE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))

    def identity(self) -> object:
        """Each sample file's name and size: samples are only ever appended or rotated."""
        if not self.directory.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_size) for p in self.directory.glob("*.jsonl*")))

    def samples(self, *, window_seconds: float) -> list[dict[str, Any]]:
        """Samples newer than the window, oldest first."""
        if not self.directory.is_dir():
            return []
        cutoff = time.time() - window_seconds
        records: list[dict[str, Any]] = []
        self.unreadable = 0
        for path in self.directory.glob("*.jsonl*"):
            try:
                if path.stat().st_mtime < cutoff:
                    continue
            except OSError:
                continue
            lines = read_lines(path)
            self.unreadable += lines.unreadable
            records.extend(r for r in lines.records if sample_time(r) >= cutoff)
        records.sort(key=sample_time)
        return records

    def forget(self, endpoint: str | None = None) -> int:
        """Drop the samples (of one endpoint), e.g. after a drift was fixed; returns how many
        were dropped. Rewrites each file in place: run it while traffic is quiet."""
        dropped = 0
        for path in self.directory.glob("*.jsonl*") if self.directory.is_dir() else []:
            records = read_records(path)
            keep = [r for r in records if endpoint is not None and r.get("endpoint") != endpoint]
            dropped += len(records) - len(keep)
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in keep))
        return dropped


def sample_time(record: Mapping[str, Any]) -> float:
    """A sample's time; a record whose `ts` is not a number is too old to count."""
    ts = record.get("ts", 0)
    return float(ts) if isinstance(ts, int | float) else 0.0


@dataclass
class Verdict:
    """An endpoint's parity over the window."""

    endpoint: str
    verdict: Outcome
    samples: int
    passed: int
    comparator: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    drift: dict[str, dict[str, int]] = field(default_factory=lambda: {"rust": {}, "go": {}})
    noise: dict[str, Any] = field(default_factory=dict)
    worst: list[dict[str, Any]] = field(default_factory=list)
    differing_paths: dict[str, int] = field(default_factory=dict)
    last_sample: float | None = None
    sources: dict[str, int] = field(default_factory=dict)  # comparisons per kind (shadow, probe)
    proposals: list[Proposal] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.samples - self.passed

    def headline(self) -> str:
        """`PASS 57/57 cos≥0.99999`, as the seed's parity log writes it."""
        if self.verdict == INCONCLUSIVE:
            needed = self.metrics.get("min_samples", 0)
            shown = self.samples  # past the minimum, only successful answers count
            if shown >= needed:
                shown -= int(self.metrics.get("agreed_errors", 0))
            return f"{self.verdict} {shown}/{needed:.0f} samples"
        text = f"{self.verdict} {self.passed}/{self.samples}"
        if self.comparator == "cosine" and "min_cosine" in self.metrics:
            value = self.metrics["min_cosine"]
            text += (
                f" cos≥{_floor(value, 5):.5f}" if self.verdict == PASS else f" min cos={value:.5f}"
            )
        elif self.comparator == "ranking" and "min_recall" in self.metrics:
            text += f" recall@k≥{_floor(self.metrics['min_recall'], 3):.3f}"
        elif self.verdict == PASS:
            text += " identical" if not self.differing_paths else " within tolerance"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "verdict": self.verdict,
            "headline": self.headline(),
            "samples": self.samples,
            "passed": self.passed,
            "failed": self.failed,
            "comparator": self.comparator,
            "reasons": self.reasons,
            "metrics": self.metrics,
            "drift": self.drift,
            "noise": self.noise,
            "differing_paths": self.differing_paths,
            "worst": self.worst,
            "proposals": [p.to_dict() for p in self.proposals],
            "last_sample": iso_utc(self.last_sample, timespec="seconds")
            if self.last_sample
            else None,
            "sources": self.sources,
        }


def judge(route: Route, records: Iterable[Mapping[str, Any]]) -> Verdict:
    """Draw one endpoint's verdict from its samples (shadow and probe) and noise samples."""
    policy = route.parity
    records = list(records)
    comparisons = [r for r in records if r.get("kind") in ("shadow", "probe")]
    comparisons = comparisons[-MAX_SAMPLES_PER_ENDPOINT:]
    noise = [r for r in records if r.get("kind") == "noise"]
    noise_paths = {d["path"] for r in noise for d in r.get("blocking", [])}
    noise_cosine = min(
        (r["metrics"]["min_cosine"] for r in noise if "min_cosine" in r.get("metrics", {})),
        default=None,
    )
    noise_recall = min(
        (r["metrics"]["recall"] for r in noise if "recall" in r.get("metrics", {})), default=None
    )
    min_cosine = (
        min(policy.min_cosine, noise_cosine) if noise_cosine is not None else policy.min_cosine
    )
    min_recall = (
        min(policy.min_recall, noise_recall) if noise_recall is not None else policy.min_recall
    )

    verdict = Verdict(route.name, INCONCLUSIVE, len(comparisons), 0, policy.comparator)
    verdict.sources = dict(Counter(str(r["kind"]) for r in comparisons))
    verdict.metrics["min_samples"] = policy.min_samples
    verdict.noise = {
        "samples": len(noise),
        "paths": sorted(noise_paths),
        "min_cosine": noise_cosine,
        "min_recall": noise_recall,
        "effective_min_cosine": min_cosine,
        "effective_min_recall": min_recall,
    }
    cosines, recalls = [], []
    differing: Counter[str] = Counter()
    failures: list[tuple[float, Mapping[str, Any]]] = []
    for record in comparisons:
        metrics = record.get("metrics", {})
        problems = [d for d in record.get("blocking", []) if d["path"] not in noise_paths]
        reasons = [f"{d['path']} {d['kind']}" for d in problems]
        if record.get("error"):
            reasons.append(record["error"])
        if "min_cosine" in metrics:
            cosines.append(metrics["min_cosine"])
            if metrics["min_cosine"] < min_cosine:
                reasons.append(f"cosine {metrics['min_cosine']:.5f} < {min_cosine}")
        if "recall" in metrics:
            recalls.append(metrics["recall"])
            if metrics["recall"] < min_recall:
                reasons.append(f"recall {metrics['recall']:.3f} < {min_recall}")
        for difference in problems:
            differing[difference["path"]] += 1
        for side in ("rust", "go"):
            for path in record.get("only_in", {}).get(side, []):
                verdict.drift[side][path] = verdict.drift[side].get(path, 0) + 1
        if reasons:
            severity = metrics.get("min_cosine", metrics.get("recall", 0.0))
            failures.append((severity, {**record, "reasons": reasons}))
        else:
            verdict.passed += 1
        verdict.last_sample = record.get("ts")
    if cosines:
        verdict.metrics.update(min_cosine=min(cosines), p50_cosine=percentiles(cosines, (50,))[0])
    if recalls:
        verdict.metrics.update(min_recall=min(recalls), mean_recall=sum(recalls) / len(recalls))
    verdict.differing_paths = dict(differing.most_common(20))
    verdict.proposals = propose(comparisons, tolerance=policy.tolerance)
    failures.sort(key=lambda entry: entry[0])
    verdict.worst = [_worst_entry(record) for _, record in failures[:3]]

    agreed_errors = sum(1 for record in comparisons if _same_error(record))
    if agreed_errors:
        verdict.metrics["agreed_errors"] = agreed_errors
    answered = verdict.samples - agreed_errors
    if verdict.samples < policy.min_samples:
        verdict.verdict = INCONCLUSIVE
        verdict.reasons.append(
            f"{verdict.samples} of {policy.min_samples} comparisons needed"
            + (" (no shadow data: turn shadow on)" if not verdict.samples else "")
        )
        if failures:
            verdict.reasons.append(f"{len(failures)} failed so far")
    elif verdict.failed / verdict.samples > policy.max_failure_ratio:
        verdict.verdict = FAIL
        verdict.reasons.extend(verdict.worst[0]["reasons"][:3] if verdict.worst else [])
    elif answered < policy.min_samples:
        # Both backends refusing the same bad requests says nothing of their answers: a
        # window of errors alone must not open the gate.
        verdict.verdict = INCONCLUSIVE
        verdict.reasons.append(
            f"{answered} of {policy.min_samples} comparisons of successful answers needed "
            f"({agreed_errors} where both backends answered the same error status do not count)"
        )
    else:
        verdict.verdict = PASS
    return verdict


def _same_error(record: Mapping[str, Any]) -> bool:
    """A sample where both backends answered the same non-2xx status (compared by status
    alone: the same refusal on both sides)."""
    status = record.get("status")
    if not isinstance(status, Mapping):
        return False
    rust, go = status.get("rust"), status.get("go")
    return isinstance(rust, int) and rust == go and not 200 <= rust < 300


def verdicts(routes: RouteTable, records: Iterable[Mapping[str, Any]]) -> dict[str, Verdict]:
    """A verdict for every endpoint that can be shadowed."""
    by_endpoint: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_endpoint.setdefault(record.get("endpoint", ""), []).append(record)
    return {
        name: judge(route, by_endpoint.get(name, []))
        for name, route in routes.routes.items()
        if route.shadowable
    }


def evidence(verdict: Verdict) -> str:
    """What a verdict rests on, e.g. `20 shadowed live requests, 5 probe requests`; "" when
    nothing (a row without samples must not claim any)."""
    names = {"shadow": "shadowed live request", "probe": "probe request"}
    return ", ".join(
        f"{count} {names.get(kind, kind)}{'' if count == 1 else 's'}"
        for kind, count in sorted(verdict.sources.items())
    )


def markdown(routes: RouteTable, results: Mapping[str, Verdict]) -> str:
    """Rows in the seed's parity-log format (the notes say what each verdict rests on), then
    the drift catalogue."""
    today = datetime.now(UTC).date().isoformat()
    lines = [
        "| Endpoint | Date | Rust path | Go path | Verdict | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, verdict in results.items():
        route = routes[name]
        detail = "; ".join(part for part in (_notes(verdict, empty=""), evidence(verdict)) if part)
        lines.append(
            f"| `{name}` | {today} | `{route.faces['rust'].template}` | "
            f"`{route.faces['go'].template}` | {MARK[verdict.verdict]} {verdict.headline()} | "
            f"{detail} |"
        )
    lines += [
        "",
        "## Wire-format drift catalogue (fields seen on one side only, after translation)",
    ]
    drifting = {n: v for n, v in results.items() if v.drift["rust"] or v.drift["go"]}
    if not drifting:
        lines += ["", "No field was seen on one side only."]
    for name, verdict in drifting.items():
        lines += ["", f"### {name}", "", "| Field | Rust | Go |", "|---|---|---|"]
        paths = sorted(set(verdict.drift["rust"]) | set(verdict.drift["go"]))
        for path in paths:
            rust = verdict.drift["rust"].get(path)
            go = verdict.drift["go"].get(path)
            lines.append(
                f"| `{path}` | {f'{rust}/{verdict.samples}' if rust else '—'} | "
                f"{f'{go}/{verdict.samples}' if go else '—'} |"
            )
        lines += _proposal_lines(verdict.proposals)
    return "\n".join(lines)


def _proposal_lines(proposals: list[Proposal]) -> list[str]:
    """Each proposed mapping as a route-table line an operator can paste."""
    lines = []
    for proposal in proposals:
        target = proposal.program.rsplit("_", 1)[-1].capitalize()
        lines += [
            "",
            f"Proposed mapping to the {target} side, supported by {proposal.support} of "
            f"{proposal.samples} samples with one-sided fields "
            f'(for `[routes.NAME.jq]` of an `adapter = "jq"` endpoint):',
            "",
            "```toml",
            f"{proposal.program} = {_toml_string(proposal.expression)}",
            "```",
        ]
        lines += [f"- {line}" for line in proposal.mapped]
        if proposal.unmapped:
            lines.append("- not explained: " + ", ".join(f"`{p}`" for p in proposal.unmapped))
    return lines


def _toml_string(text: str) -> str:
    """A TOML literal string when it can be one (jq programs are full of double quotes)."""
    if "'" not in text and "\n" not in text:
        return f"'{text}'"
    return orjson.dumps(text).decode()


def table(results: Mapping[str, Verdict]) -> str:
    rows = [("ENDPOINT", "VERDICT", "SAMPLES", "DETAIL")]
    for name, verdict in results.items():
        rows.append((name, verdict.headline(), str(verdict.samples), _notes(verdict)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def _notes(verdict: Verdict, *, empty: str = "-") -> str:
    parts = []
    metrics = verdict.metrics
    if "min_cosine" in metrics:
        parts.append(f"min cos {metrics['min_cosine']:.6f}, p50 {metrics['p50_cosine']:.6f}")
    if "min_recall" in metrics:
        parts.append(f"recall min {metrics['min_recall']:.3f} mean {metrics['mean_recall']:.3f}")
    if verdict.worst:
        worst = verdict.worst[0]
        if worst.get("missed_ids"):
            parts.append("missed ids " + ", ".join(worst["missed_ids"][:5]))
        parts.append("worst: " + "; ".join(worst["reasons"][:2]))
    if verdict.differing_paths:
        parts.append("differs at " + ", ".join(list(verdict.differing_paths)[:3]))
    if verdict.noise.get("samples"):
        parts.append(f"noise floor from {verdict.noise['samples']} repeats")
    if verdict.verdict == INCONCLUSIVE and verdict.reasons:
        parts.append(verdict.reasons[0])
    return "; ".join(parts) or empty


def _worst_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("time", "request_id", "metrics", "missed_ids", "reasons", "request", "status", "error")
    return {key: record[key] for key in keep if key in record}


def _floor(value: float, digits: int) -> float:
    scale = float(10**digits)
    return math.floor(value * scale) / scale


def excerpt(body: bytes) -> str:
    """The request that caused a sample, size-capped for the store."""
    text = body[:REQUEST_EXCERPT_BYTES].decode("utf-8", "replace")
    return text + ("…" if len(body) > REQUEST_EXCERPT_BYTES else "")
