"""The load-test report: per-step medians, the tables, the Markdown and the PNG plots; the
steps' names, targets, checks and capacity are `load_tests.targets` (re-exported here).

A run is one step's figures as `load_tests.engine` (embedded: one process on SQLite) or
`load_tests.fleet` (a beat, workers and a dashboard, each its own process, on PostgreSQL, with
Redis or polling for wake-ups) returns them. A step is (topology, llm, stacks); its row is the
median of each figure over the step's runs.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from load_tests.targets import (
    AGENTS_PER_STACK,
    CALLS_PER_TICK,
    CRITERIA,
    EMBEDDED,
    GENERIC,
    TARGETS,
    Capacity,
    Check,
    Run,
    Target,
    capacity,
    check,
    metric,
    nominal_tick_ms,
    series,
    setup,
    started_share,
)

__all__ = ["AGENTS_PER_STACK", "CALLS_PER_TICK", "CRITERIA", "EMBEDDED", "GENERIC", "TARGETS",
           "Capacity", "Check", "Run", "Target", "capacity", "check", "metric",
           "nominal_tick_ms", "series", "setup", "started_share"]

NUMBERS = ("ticks_expected", "ticks_started", "ticks_succeeded", "ticks_skipped",
           "ticks_skipped_busy", "ticks_failed", "cpu_ms_per_tick",
           "cpu_ms_per_tick_without_sdk", "sdk_cpu_ms_per_call", "rss_mb", "llm_calls_per_s",
           "fallbacks", "db_rows_per_s", "stream_events", "rss_anon_mb",
           "postgres_cpu_ms_per_tick", "sim_cpu_ms_per_tick", "longest_lock_wait_ms",
           "duration_s")
SUMMARIES = ("lateness_ms", "claim_lateness_ms", "tick_duration_ms", "propagation_ms")
MAPPINGS = ("cpu_ms_per_tick_by_process", "served_by_provider")


def served_by_provider(run: Run) -> dict[str, float] | None:
    """The calls each provider answered: the engine counts them, the fleet counts its attempts
    by outcome ("ok" is served)."""
    if run.get("served_by_provider"):
        return dict(run["served_by_provider"])
    if run.get("llm_calls_by_provider"):
        return {p: float(n) for p, n in run["llm_calls_by_provider"].items()}
    attempts = run.get("llm_attempts_by_provider")
    if attempts:
        return {p: float(by.get("ok", 0)) for p, by in attempts.items()}
    return None


def providers(row: Run) -> str:
    """Each provider's share of the calls served: "groq 0.1 % openai 99.9 %"."""
    served = row.get("served_by_provider") or served_by_provider(row)
    total = sum(served.values()) if served else 0
    if not served or not total:
        return "–"
    return " ".join(f"{p} {n / total:.1%}".replace("%", " %") for p, n in sorted(served.items()))


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cores(row: Run) -> dict[str, float]:
    """Cores used by each part: ms of CPU a tick × ticks started a second / 1000. Tickwork's
    processes by role (fleet) or the one process with the SDK's share apart (embedded),
    PostgreSQL's server and the simulator where measured."""
    started, duration = row.get("ticks_started"), row.get("duration_s")
    if not started or not duration:
        return {}
    per_tick: dict[str, float] = {}
    by_process = row.get("cpu_ms_per_tick_by_process")
    cpu, without = row.get("cpu_ms_per_tick"), row.get("cpu_ms_per_tick_without_sdk")
    if by_process:  # worker0, worker1, dashboard2, beat3
        for name, ms in by_process.items():
            role = re.sub(r"\d+$", "", name)
            part = "tickwork workers" if role == "worker" else f"tickwork {role}"
            per_tick[part] = per_tick.get(part, 0.0) + (ms or 0.0)
    elif cpu is not None and without is not None:
        per_tick.update({"tickwork": without, "the SDK's share": max(0.0, cpu - without)})
    elif cpu is not None:
        per_tick["tickwork"] = cpu
    for key, name in (("postgres_cpu_ms_per_tick", "PostgreSQL"),
                      ("sim_cpu_ms_per_tick", "simulator")):
        if row.get(key) is not None:
            per_tick[name] = row[key]
    return {name: ms * started / duration / 1000 for name, ms in per_tick.items()}


def medians(runs: Sequence[Run]) -> list[Run]:
    """One row per step (topology, llm, stacks): the median of each figure over its runs."""
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((setup(run), str(run.get("llm") or "?"), int(run["stacks"])),
                          []).append(run)
    rows = []
    for (topology, llm, stacks), group in sorted(
            groups.items(), key=lambda kv: (kv[0][0] != "embedded", *kv[0])):
        first = group[0]
        row: Run = {"setup": topology, "topology": first.get("topology") or EMBEDDED,
                    "wakeups": first.get("wakeups"), "llm": llm, "stacks": stacks,
                    "repeats": len(group), "interval_s": first.get("interval_s"),
                    "sim_latency_ms": first.get("sim_latency_ms")}
        for key in NUMBERS:
            row[key] = _median([g.get(key) for g in group])
        for key in SUMMARIES:
            parts = [g[key] for g in group if g.get(key)]
            row[key] = ({k: _median([p.get(k) for p in parts]) for k in parts[0]}
                        if parts else None)
        for key in MAPPINGS:
            maps = [m for g in group if (m := served_by_provider(g) if key ==
                                          "served_by_provider" else g.get(key))]
            row[key] = ({k: _median([m.get(k) for m in maps]) for k in maps[0]}
                        if maps else None)
        row["nominal_tick_ms"] = nominal_tick_ms(row["sim_latency_ms"])
        row["started_share"] = started_share(row)
        row["cores"] = cores(row)
        rows.append(row)
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    """Milliseconds in a few characters: 5.7, 233, 1,668."""
    return _fmt(value, 1 if value is not None and abs(value) < 100 else 0)


def _started(row: Run) -> str:
    busy = row.get("ticks_skipped_busy")
    if not row.get("ticks_expected"):
        return "–"
    return f"{started_share(row):.1%} ({'–' if busy is None else f'{busy:,.0f}'})"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:.2f}"


# The printed table (fits 100 columns) and the Markdown's first table.
COLUMNS = ("step", "stacks", "started\n(busy)", "late\np50", "late\np99", "claim\np99",
           "tick\np50 s", "CPU\nms", "w/o\nSDK", "prop\np95")
_SHORT = {"polling": "poll", "inprocess": "inproc"}


def short_series(row: Run) -> str:
    """`series()` abbreviated for the table: "fleet+poll inproc"."""
    return re.sub("|".join(_SHORT), lambda m: _SHORT[m[0]], series(row))


def _cpu(value: float | None) -> str:
    return _fmt(value, 0 if value is not None and value >= 100 else
                1 if value is not None and value >= 10 else 2)


def cells(row: Run) -> list[str]:
    return [short_series(row), f"{int(row['stacks']):,}", _started(row),
            _ms(metric(row, "lateness_p50")), _ms(metric(row, "lateness_p99")),
            _ms(metric(row, "claim_p99")), _seconds(metric(row, "tick_p50")),
            _cpu(row.get("cpu_ms_per_tick")), _cpu(row.get("cpu_ms_per_tick_without_sdk")),
            _ms(metric(row, "propagation_p95"))]


# The rest, in the Markdown's second table.
MORE_COLUMNS = ("step", "stacks", "runs", "step s", "expected", "started", "busy skips",
                "other skips", "failed", "late max", "claim p50", "tick p99 s", "nominal s",
                "prop p50", "prop p99", "PG ms/tick", "sim ms/tick", "cores used", "rows/s",
                "RSS MB", "calls/s", "fallbacks", "served by")


def more_cells(row: Run) -> list[str]:
    skipped, busy = row.get("ticks_skipped"), row.get("ticks_skipped_busy")
    used = row.get("cores") or cores(row)
    return [series(row), f"{int(row['stacks']):,}", str(row.get("repeats", 1)),
            _fmt(row.get("duration_s"), 0), _fmt(row.get("ticks_expected"), 0),
            _fmt(row.get("ticks_started"), 0),
            _fmt(busy, 0), _fmt(None if skipped is None or busy is None else skipped - busy, 0),
            _fmt(row.get("ticks_failed"), 0), _ms(metric(row, "lateness_max")),
            _ms(metric(row, "claim_p50")), _seconds(metric(row, "tick_p99")),
            _seconds(row.get("nominal_tick_ms") or nominal_tick_ms(row.get("sim_latency_ms"))),
            _ms(metric(row, "propagation_p50")), _ms(metric(row, "propagation_p99")),
            _fmt(row.get("postgres_cpu_ms_per_tick"), 2), _fmt(row.get("sim_cpu_ms_per_tick"), 2),
            _fmt(sum(used.values()) if used else None, 2), _fmt(row.get("db_rows_per_s"), 0),
            _fmt(row.get("rss_mb"), 0), _fmt(row.get("llm_calls_per_s")),
            _fmt(row.get("fallbacks"), 0), providers(row)]


def _table(columns: Sequence[str], rows: Iterable[list[str]]) -> list[str]:
    return (["| " + " | ".join(c.replace("\n", " ") for c in columns) + " |",
             "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(report: Run, command: str) -> str:
    rows = medians(report["runs"])
    repeats = max((r.get("repeats", 1) for r in rows), default=1)
    machine = report.get("machine") or {}
    nominal = sorted({r["nominal_tick_ms"] for r in rows if r.get("nominal_tick_ms")})
    how = (["Reproduce with:", "", "```", command, "```"] if command else
           [f"From the runs in {', '.join(report.get('files', [])) or 'the report'}."])
    lines = ["# tickwork load test", "",
             f"tickwork {report.get('version', '?')} on {machine.get('cpus', '?')} CPUs, "
             f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}; "
             + (f"medians of up to {repeats} runs per step." if repeats > 1
                else "one run per step."), "", *how, "", "## Capacity", ""]
    lines += [f"- {c.sentence()}" for c in capacity(rows)] or ["- no step was run"]
    lines += ["", "Criteria: each step is judged on the docs/design.md targets that apply to "
              "it (listed under Targets below) and, whatever its size, on the chain targets' "
              "limits that hold at any stack count: " + ", ".join(GENERIC) + ". The machine "
              "holds the largest stack count whose step met them all; CPU counts only at the "
              "steps whose targets name it.", "", "## Steps", ""]
    lines += _table(COLUMNS, (cells(r) for r in rows))
    lines += ["", "Step: topology (embedded: one process on SQLite; fleet: 1 beat and 2 workers "
              "on PostgreSQL, +redis or +poll(ing) for wake-ups) and model (chain: the real "
              "SDKs against `tickwork sim-llm`; inproc(ess): the engine alone). Started: the "
              "share of the slots' ticks started (busy: slots skipped because the stack's "
              "previous tick was still running). Lateness (late): the tick's first agent "
              "step beginning − its slot, ms; claim: the claim's timestamp − the slot, ms. "
              "CPU: tickwork's processes a tick, the SDK's share included; w/o SDK: without "
              "it (embedded chain). Propagation (prop): a commit → a separate client reading "
              "`GET /api/events`, ms. – is not measured.", "", "## More figures", ""]
    lines += _table(MORE_COLUMNS, (more_cells(r) for r in rows))
    lines += ["", "Nominal: the median of four model calls' sum at the simulated latency ("
              + (", ".join(f"{n / 1000:.2f} s" for n in nominal) or "not known") + "). PG: "
              "PostgreSQL's server CPU a tick (fleet); sim: the simulator's, where measured. "
              "Cores used: tickwork's, PostgreSQL's and the simulator's CPU a tick × ticks "
              "started a second. Step s: each run's length. Served by: each provider's share "
              "of the calls answered.", "", "## Targets", ""]
    checks = check(rows)
    lines += [f"- {c.line()}" for c in checks] or ["- no step of these runs has a target"]
    return "\n".join(lines) + "\n"


def load(paths: Sequence[Path]) -> Run:
    """The report in `paths`: a saved report ({"runs": …}) or bare runs (one JSON each, as
    `load_tests.fleet` and `load_tests.engine` write them), all runs together."""
    result: Run = {"runs": [], "files": []}
    for path in paths:
        data = json.loads(path.read_text())
        result["files"].append(path.name)
        if "runs" in data:
            for key in ("machine", "version", "command"):
                if data.get(key) is not None:
                    result.setdefault(key, data[key])
            result["runs"] += data["runs"]
        else:
            result["runs"].append(data)
    if len(paths) > 1:
        result["command"] = ""
    for run in result["runs"]:
        run["started_share"] = started_share(run)
    return result


def rerender(paths: Path | Sequence[Path], plot_dir: Path | None, markdown_path: Path | None,
             cpus: int | None = None) -> list[Check]:
    """Recompute the derived figures of a saved report (after a change to this module) and
    write its Markdown and plots again. A single saved report is written back with them;
    bare runs, or several files, are read only."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    result = load(paths)
    if cpus and not (result.get("machine") or {}).get("cpus"):
        result["machine"] = {**(result.get("machine") or {}), "cpus": cpus}
    rows = medians(result["runs"])
    if len(paths) == 1 and "runs" in (saved := json.loads(paths[0].read_text())):
        saved["runs"] = result["runs"]
        if "medians" in saved:
            saved["medians"] = rows
        paths[0].write_text(json.dumps(saved, indent=2))
    if markdown_path is not None:
        markdown_path.write_text(markdown(result, result.get("command") or ""))
    if plot_dir is not None:
        from load_tests.plots import plots

        plots(rows, plot_dir, result["machine"].get("cpus") if result.get("machine") else None)
    return check(rows)


def main() -> None:
    """python -m load_tests.report FILE.json [FILE.json …] [--plots DIR] [--markdown FILE.md]
    [--cpus N]"""
    import argparse

    parser = argparse.ArgumentParser(description="render saved load-test runs again: one "
                                     "report, or several runs' JSON files together")
    parser.add_argument("json", type=Path, nargs="+")
    parser.add_argument("--plots", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--cpus", type=int, help="the machine's cores, where the report does "
                        "not say (bare runs)")
    args = parser.parse_args()
    rows = medians(load(args.json)["runs"])
    for c in rerender(args.json, args.plots, args.markdown, args.cpus):
        print(c.line())
    for cap in capacity(rows):
        print(cap.sentence())


if __name__ == "__main__":
    main()
