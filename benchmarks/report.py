"""From the runs to what is judged: per target the median over rounds (a row of `--json`'s
"results"), the ratios with their goals, the printed table and the latency plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import Result
from benchmarks.scenarios import CEILING, FLOOR, RECIPE

Row = dict[str, Any]  # one target's row, JSON-shaped as `shim bench --json` writes it


@dataclass
class Ratio:
    label: str
    value: float
    goal: str  # e.g. ">= 0.8"; "" for information only

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        sign, bound = self.goal.split()
        return self.value >= float(bound) if sign == ">=" else self.value <= float(bound)

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "value": self.value, "goal": self.goal, "met": self.met}


def summarise(results: list[Result]) -> tuple[list[Row], list[Ratio]]:
    """Per target: the median over rounds; then the ratios the targets are judged by."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        rows.setdefault((result.scenario, result.target), []).append(result)
    table: list[Row] = []
    for (scenario, target), runs in rows.items():
        cpus = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        growths = [r.rss_growth_mib for r in runs if r.rss_growth_mib is not None]
        table.append(
            {
                "scenario": scenario,
                "target": target,
                "rps": round(statistics.median(r.rps for r in runs), 1),
                "latency_ms": {
                    p: round(statistics.median(r.latency_ms[p] for r in runs), 3)
                    for p in runs[0].latency_ms
                },
                "cpu_us_per_request": round(statistics.median(cpus), 1) if cpus else None,
                "mib_per_s": round(statistics.median(r.mib_per_s for r in runs), 1),
                "rss_growth_mib": max(growths) if growths else None,
                "errors": sum(r.errors for r in runs),
            }
        )
        if runs[0].burst is not None:
            table[-1]["burst"] = median_burst([r.burst for r in runs if r.burst])
    by = {(row["scenario"], row["target"]): row for row in table}
    ratios: list[Ratio] = []

    def value(key: tuple[str, str], name: str) -> float | None:
        row = by.get(key)
        if row is None:
            return None
        found: float | None = row["latency_ms"][name[1:]] if name in ("p50", "p99") else row[name]
        return found

    def ratio(label: str, a: tuple[str, str], b: tuple[str, str], name: str, goal: str) -> None:
        top, bottom = value(a, name), value(b, name)
        if top is not None and bottom:
            ratios.append(Ratio(label, round(top / bottom, 2), goal))

    small, embed = "small", "embed"
    ratio("shim / floor RPS", (small, "shim"), (small, FLOOR), "rps", ">= 0.8")
    ratio("shim / starlette+httpx RPS", (small, "shim"), (small, RECIPE), "rps", ">= 10")
    ratio("shim p99 / floor p99", (small, "shim"), (small, FLOOR), "p99", "<= 1.5")
    ratio("shim 2 workers / 1 worker RPS", (small, "shim, 2 workers"), (small, "shim"), "rps", "")
    ratio("shim / nginx RPS", (small, "shim"), (small, "nginx"), "rps", "")
    ratio(
        "embed cross / same-dialect RPS",
        (embed, "shim cross-dialect"),
        (embed, "shim same-dialect"),
        "rps",
        ">= 0.6",
    )
    ratio(
        "embed rename-only / same-dialect RPS",
        (embed, "shim rename-only"),
        (embed, "shim same-dialect (rust)"),
        "rps",
        ">= 0.85",
    )
    ratios += embed_series(by)
    ratio(
        "storage shim / direct MiB/s",
        ("storage", "shim"),
        ("storage", "direct"),
        "mib_per_s",
        ">= 0.5",
    )
    for name in ("nginx", "shim", "shim, 2 workers"):
        row = by.get(("burst", name))
        if row is not None:
            goal = ">= 0.995" if name == "shim, 2 workers" else ""
            share = row["burst"]["answered_share"]
            ratios.append(Ratio(f"burst {name}: answered / sent", share, goal))
    overload = by.get(("overload", "shim"))
    if overload is not None and "backend_peak" in overload["burst"]:
        peak = overload["burst"]["backend_peak"]
        ratios.append(Ratio("overload shim: backend peak / ceiling", peak / CEILING, "<= 1.0"))
    storage = by.get(("storage", "shim"))
    if storage is not None and storage["rss_growth_mib"] is not None:
        ratios.append(Ratio("storage shim RSS growth MiB", storage["rss_growth_mib"], "<= 50"))
    ratio(
        "shadow on / off p50 (paced)",
        ("shadow", "shadow on"),
        ("shadow", "shadow off"),
        "p50",
        "<= 1.05",
    )
    return table, ratios


EMBED_DIRECTIONS = {  # the series' direction -> its 8x768 target's name
    "same-dialect": "shim same-dialect",
    "normalising": "shim cross-dialect",
    "rename-only": "shim rename-only",
}


def embed_series(by: dict[tuple[str, str], Row]) -> list[Ratio]:
    """CPU per vector along the batch series, per direction; and how flat it stays from 8 to
    the largest batch (the target: within 20%)."""
    found: list[Ratio] = []
    for direction, at_8 in EMBED_DIRECTIONS.items():
        per_vector: dict[int, float] = {}
        for (scenario, target), row in by.items():
            texts = 8 if target == at_8 else _batch_of(target, direction)
            cpu = row["cpu_us_per_request"]
            if scenario == "embed" and texts and isinstance(cpu, float | int):
                per_vector[texts] = cpu / texts
        for texts in sorted(per_vector):
            label = f"embed {direction} CPU us/vector, {texts}x768"
            found.append(Ratio(label, round(per_vector[texts], 1), ""))
        largest = max(per_vector, default=0)
        if direction != "same-dialect" and 8 in per_vector and largest > 8:
            found.append(
                Ratio(
                    f"embed {direction} CPU/vector {largest} / 8 texts",
                    round(per_vector[largest] / per_vector[8], 2),
                    "<= 1.2",
                )
            )
    return found


def _batch_of(target: str, direction: str) -> int | None:
    texts, _, rest = target.partition("x768 ")
    return int(texts) if rest == direction and texts.isdigit() else None


def median_burst(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of a burst target over its rounds: medians, and outcomes other than 2xx or
    shed summed."""

    def middle(key: str) -> float:
        return statistics.median(float(run[key]) for run in runs if key in run)

    other: dict[str, int] = {}
    for run in runs:
        for outcome, count in run["other"].items():
            other[outcome] = other.get(outcome, 0) + count
    row: dict[str, Any] = {
        "sent": middle("sent"),
        "answered": middle("answered"),
        "shed": middle("shed"),
        "other": other,  # summed over the rounds
        "other_per_round": statistics.median(sum(run["other"].values()) for run in runs),
        "wall_s": middle("wall_s"),
        "answered_share": round(middle("answered") / middle("sent"), 4),
        "shed_p50_ms": statistics.median(  # over the rounds that shed at all
            [float(run["shed_ms"]["50"]) for run in runs if run["shed_ms"]] or [0.0]
        ),
    }
    if all("backend_peak" in run for run in runs):
        row["backend_peak"] = max(float(run["backend_peak"]) for run in runs)
    return row


def burst_line(details: dict[str, Any]) -> str:
    """A burst's outcome in one line of progress."""
    other = ", ".join(f"{k} x{v}" for k, v in sorted(details["other"].items()))
    line = (
        f"{details['answered']}/{details['sent']} answered, {details['shed']} shed"
        f"{', ' + other if other else ''} in {details['wall_s']} s"
    )
    if "backend_peak" in details:
        line += f", backend held {details['backend_peak']} at once"
    return line


def render(table: list[Row], ratios: list[Ratio]) -> str:
    bursts = [row for row in table if "burst" in row]
    lines = (
        []
        if len(bursts) == len(table)
        else [
            f"{'scenario':<8} {'target':<28} {'RPS':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'CPU us/req':>10} {'MiB/s':>8} {'errors':>6}"
        ]
    )
    for row in table:
        if "burst" in row:
            continue
        cpu = row["cpu_us_per_request"]
        latency = row["latency_ms"]
        lines.append(
            f"{row['scenario']:<8} {row['target']:<28} {row['rps']:>9.0f} "
            f"{latency['50']:>8.2f} {latency['90']:>8.2f} {latency['99']:>8.2f} "
            f"{('-' if cpu is None else f'{cpu:.0f}'):>10} {row['mib_per_s']:>8.0f} "
            f"{row['errors']:>6}"
        )
    if bursts:
        lines += [
            "",
            f"{'scenario':<8} {'target':<28} {'sent':>6} {'answered':>8} {'shed':>6} "
            f"{'other':>6} {'p50 ms':>8} {'p99 ms':>8} {'shed p50':>8} {'wall s':>7} "
            f"{'peak':>5}",
        ]
        for row in bursts:
            done, latency = row["burst"], row["latency_ms"]
            peak = done.get("backend_peak")
            lines.append(
                f"{row['scenario']:<8} {row['target']:<28} {done['sent']:>6.0f} "
                f"{done['answered']:>8.0f} {done['shed']:>6.0f} {done['other_per_round']:>6.0f} "
                f"{latency['50']:>8.1f} {latency['99']:>8.1f} {done['shed_p50_ms']:>8.1f} "
                f"{done['wall_s']:>7.2f} {'-' if peak is None else f'{peak:.0f}':>5}"
            )
    lines.append("")
    for r in ratios:
        verdict = {True: "met", False: "NOT met", None: ""}[r.met]
        goal = f"(target {r.goal}) {verdict}" if r.goal else "(for information)"
        lines.append(f"{r.label}: {r.value:g} {goal}")
    return "\n".join(lines)


def plot(table: list[Row], path: Path) -> bool:
    """Latency percentiles per target, one panel per scenario (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = list(dict.fromkeys(str(row["scenario"]) for row in table))
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios, strict=True):
        for row in table:
            if row["scenario"] != scenario:
                continue
            points = sorted((float(p), ms) for p, ms in row["latency_ms"].items())
            axis.plot(
                [p for p, _ in points], [ms for _, ms in points], marker="o", label=row["target"]
            )
        axis.set_title(scenario)
        axis.set_xlabel("percentile")
        axis.set_ylabel("latency (ms)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
