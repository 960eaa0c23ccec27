"""The load-test report: per-step medians, pass/fail against the targets, Markdown and PNG plots.

A run is one step's figures as `load_tests.engine` returns them (plus `propagation_ms`, None
when not measured). The targets are docs/design.md's "Performance" ones; each applies to one model
mode at one stack count and is judged only where the sweep ran that step.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Run = dict[str, Any]

NUMBERS = ("ticks_expected", "ticks_started", "ticks_succeeded", "ticks_skipped",
           "ticks_skipped_busy", "ticks_failed", "cpu_ms_per_tick",
           "cpu_ms_per_tick_without_sdk", "sdk_cpu_ms_per_call", "rss_mb", "llm_calls_per_s",
           "fallbacks", "db_rows_per_s", "stream_events", "rss_anon_mb")
SUMMARIES = ("lateness_ms", "tick_duration_ms", "propagation_ms")


@dataclass(frozen=True)
class Target:
    llm: str
    stacks: int
    label: str
    metric: str  # "started_share", "lateness_p99", "cpu_ms_per_tick", "propagation_p95|p99"
    limit: float
    at_least: bool = False  # the figure must be >= limit (otherwise <=)


STARTED = "100% of ticks started"
TARGETS = (
    Target("inprocess", 1000, STARTED, "started_share", 1.0, at_least=True),
    Target("inprocess", 1000, "lateness p99 ≤ 50 ms", "lateness_p99", 50.0),
    Target("inprocess", 1000, "CPU ≤ 2 ms per tick", "cpu_ms_per_tick", 2.0),
    Target("chain", 500, STARTED, "started_share", 1.0, at_least=True),
    Target("chain", 500, "lateness p99 ≤ 100 ms", "lateness_p99", 100.0),
    *(Target(llm, 100, "propagation p95 ≤ 100 ms", "propagation_p95", 100.0)
      for llm in ("inprocess", "chain")),
    *(Target(llm, 100, "propagation p99 ≤ 250 ms", "propagation_p99", 250.0)
      for llm in ("inprocess", "chain")),
)


@dataclass(frozen=True)
class Check:
    target: Target
    value: float | None

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        t = self.target
        return self.value >= t.limit if t.at_least else self.value <= t.limit

    def line(self) -> str:
        t = self.target
        shown = "n/a" if self.value is None else (
            f"{self.value:.1%}" if t.metric == "started_share" else f"{self.value:.2f}")
        return (f"{'PASS' if self.passed else 'FAIL'}  {t.llm} at {t.stacks} stacks: "
                f"{t.label} (measured {shown})")


def started_share(run: Run) -> float:
    """Ticks started over slots expected. Slots skipped because the stack's previous tick was
    still running count as not started — whether the model's latency tail made that tick
    outlast its slot or the engine was too slow — and are shown apart ("busy")."""
    expected = run.get("ticks_expected") or 0
    return float(run.get("ticks_started") or 0) / expected if expected > 0 else 0.0


def rerender(path: Path, plot_dir: Path | None, markdown_path: Path | None) -> list[Check]:
    """Recompute the derived figures of a saved report (after a change to this module) and
    write its Markdown and plots again."""
    import json

    result = json.loads(path.read_text())
    for run in result["runs"]:
        run["started_share"] = started_share(run)
    rows = medians(result["runs"])
    if "medians" in result:
        result["medians"] = rows
    path.write_text(json.dumps(result, indent=2))
    if markdown_path is not None:
        markdown_path.write_text(markdown(result, result.get("command", "")))
    if plot_dir is not None:
        plots(rows, plot_dir)
    return check(rows)


def metric(run: Run, name: str) -> float | None:
    if name == "started_share":
        return started_share(run)
    if name == "lateness_p99":
        return (run.get("lateness_ms") or {}).get("p99")
    if name.startswith("propagation_"):
        return (run.get("propagation_ms") or {}).get(name.removeprefix("propagation_"))
    value = run.get(name)
    return None if value is None else float(value)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(runs: Sequence[Run]) -> list[Run]:
    """One row per (llm, stacks): the median of each figure over the repeats."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run["llm"], int(run["stacks"])), []).append(run)
    rows = []
    for (llm, stacks), group in sorted(groups.items()):
        row: Run = {"llm": llm, "stacks": stacks, "repeats": len(group),
                    "duration_s": group[0]["duration_s"], "interval_s": group[0]["interval_s"]}
        for key in NUMBERS:
            row[key] = _median([g.get(key) for g in group])
        for key in SUMMARIES:
            parts = [g[key] for g in group if g.get(key)]
            row[key] = ({k: _median([p.get(k) for p in parts]) for k in parts[0]}
                        if parts else None)
        rows.append(row)
    return rows


def check(rows: Sequence[Run]) -> list[Check]:
    """The targets whose step is among `rows` (the per-step medians), judged."""
    found = {(r["llm"], int(r["stacks"])): r for r in rows}
    return [Check(t, metric(found[(t.llm, t.stacks)], t.metric)) for t in TARGETS
            if (t.llm, t.stacks) in found]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


COLUMNS = ("llm", "stacks", "expected", "started", "ok", "skip (busy)", "fail", "late p50",
           "late p99", "late max", "tick p50 ms", "cpu ms/tick", "w/o sdk", "prop p95",
           "prop p99", "rows/s", "rss MB", "llm calls/s", "fallbacks")


def cells(row: Run) -> list[str]:
    late = row.get("lateness_ms") or {}
    dur = row.get("tick_duration_ms") or {}
    prop = row.get("propagation_ms") or {}
    return [str(row["llm"]), str(row["stacks"]), _fmt(row.get("ticks_expected"), 0),
            f"{_fmt(row.get('ticks_started'), 0)} ({started_share(row):.1%})",
            _fmt(row.get("ticks_succeeded"), 0),
            f"{_fmt(row.get('ticks_skipped'), 0)} ({_fmt(row.get('ticks_skipped_busy'), 0)})",
            _fmt(row.get("ticks_failed"), 0), _fmt(late.get("p50")), _fmt(late.get("p99")),
            _fmt(late.get("max")), _fmt(dur.get("p50"), 0), _fmt(row.get("cpu_ms_per_tick"), 2),
            _fmt(row.get("cpu_ms_per_tick_without_sdk"), 2), _fmt(prop.get("p95")),
            _fmt(prop.get("p99")), _fmt(row.get("db_rows_per_s"), 0), _fmt(row.get("rss_mb"), 0),
            _fmt(row.get("llm_calls_per_s")), _fmt(row.get("fallbacks"), 0)]


def markdown(report: Run, command: str) -> str:
    rows = report.get("medians") or medians(report["runs"])
    repeats = max((r.get("repeats", 1) for r in rows), default=1)
    machine = report.get("machine", {})
    lines = ["# tickwork load test", "",
             f"tickwork {report.get('version', '?')} on {machine.get('cpus', '?')} CPUs, "
             f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}; "
             + (f"medians of {repeats} runs per step." if repeats > 1 else "one run per step."),
             "", "Reproduce with:", "", "```", command, "```", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    lines += ["", "Lateness is tick start − slot (ms). CPU is the tickwork process's CPU per "
              "tick (median over beat intervals), serving one event-stream client included; "
              "'w/o sdk' takes off the model calls' share (each call's CPU measured against "
              "sim-llm with no latency before the step). 'skip (busy)': slots skipped, of "
              "which because the stack's previous tick was still running. Propagation is "
              "commit → a separate client process reading `GET /api/events`. – is not "
              "measured.", "", "## Targets", ""]
    checks = check(rows)
    lines += [f"- {c.line()}" for c in checks] or ["- no step of this sweep has a target"]
    return "\n".join(lines) + "\n"


def _lines(ax: Any, llms: Sequence[str], metric_name: str) -> None:
    for t in TARGETS:
        if t.metric == metric_name and t.llm in llms:
            ax.axhline(t.limit, linestyle="--", linewidth=1, color="tab:red")
            ax.annotate(f"target {t.llm} @ {t.stacks}: {t.label}", (0.01, t.limit),
                        xycoords=("axes fraction", "data"), fontsize=7, color="tab:red",
                        va="bottom")


def plots(rows: Sequence[Run], directory: Path) -> list[Path]:
    """Write the PNGs for the per-step medians; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    llms = sorted({str(r["llm"]) for r in rows})
    series: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
        ("lateness.png", "Beat lateness (tick start − slot)", "ms",
         [("p50", lambda r: (r.get("lateness_ms") or {}).get("p50")),
          ("p99", lambda r: (r.get("lateness_ms") or {}).get("p99"))]),
        ("cpu_per_tick.png", "Orchestration CPU per tick (median)", "ms",
         [("cpu", lambda r: r.get("cpu_ms_per_tick")),
          ("cpu without the SDK's share", lambda r: r.get("cpu_ms_per_tick_without_sdk"))]),
        ("started.png", "Share of slots' ticks started", "share",
         [("started", started_share)]),
    ]
    if any(r.get("propagation_ms") for r in rows):
        series.append(("propagation.png", "Commit → event-stream client", "ms",
                       [("p50", lambda r: (r.get("propagation_ms") or {}).get("p50")),
                        ("p95", lambda r: (r.get("propagation_ms") or {}).get("p95")),
                        ("p99", lambda r: (r.get("propagation_ms") or {}).get("p99"))]))
    targets = {"lateness.png": "lateness_p99", "cpu_per_tick.png": "cpu_ms_per_tick",
               "started.png": "started_share", "propagation.png": "propagation_p95"}
    written = []
    for name, title, unit, lines in series:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for llm in llms:
            mine = sorted((r for r in rows if r["llm"] == llm), key=lambda r: int(r["stacks"]))
            for label, get in lines:
                points = [(int(r["stacks"]), get(r)) for r in mine if get(r) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o", label=f"{llm} {label}")
        _lines(ax, llms, targets[name])
        if name == "propagation.png":
            ax.axhline(250, linestyle=":", linewidth=1, color="tab:red")
        ax.set_xscale("log")
        sizes = sorted({int(r["stacks"]) for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.05 if name == "started.png" else None)
        ax.set_xlabel("running stacks")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    """python -m load_tests.report FILE.json [--plots DIR] [--markdown FILE.md]"""
    import argparse

    parser = argparse.ArgumentParser(description="render a saved load-test report again")
    parser.add_argument("json", type=Path)
    parser.add_argument("--plots", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    for c in rerender(args.json, args.plots, args.markdown):
        print(c.line())


if __name__ == "__main__":
    main()
