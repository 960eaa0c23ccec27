"""The load-test report on fabricated runs: medians, target checks, Markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from load_tests import report

pytest.importorskip("matplotlib")


def _run(llm: str, stacks: int, p99: float, cpu: float, started: int | None = None,
         propagation: dict[str, float] | None = None) -> dict[str, Any]:
    expected = stacks * 6
    return {"llm": llm, "stacks": stacks, "duration_s": 60.0, "interval_s": 10,
            "ticks_expected": expected,
            "ticks_started": expected if started is None else started,
            "ticks_succeeded": expected, "ticks_skipped": 0, "ticks_failed": 0,
            "lateness_ms": {"p50": p99 / 4, "p95": p99 / 2, "p99": p99, "max": p99 * 2},
            "tick_duration_ms": {"p50": 1600.0, "p95": 2800.0, "p99": 3100.0, "max": 3500.0},
            "cpu_ms_per_tick": cpu, "propagation_ms": propagation, "rss_mb": 120.0,
            "llm_calls_per_s": stacks * 0.4}


RUNS = [
    _run("inprocess", 100, 10.0, 1.0, propagation={"p50": 20.0, "p95": 60.0, "p99": 90.0}),
    _run("inprocess", 1000, 40.0, 1.5),
    _run("inprocess", 1000, 60.0, 2.5),
    _run("inprocess", 1000, 45.0, 1.8, started=5990),
    _run("chain", 500, 150.0, 3.0),
]


def test_medians_group_the_repeats_per_step() -> None:
    rows = report.medians(RUNS)
    assert [(r["llm"], r["stacks"], r["repeats"]) for r in rows] == [
        ("chain", 500, 1), ("inprocess", 100, 1), ("inprocess", 1000, 3)]
    big = rows[2]
    assert big["lateness_ms"]["p99"] == 45.0
    assert big["cpu_ms_per_tick"] == 1.8
    assert big["ticks_started"] == 6000
    assert rows[0]["propagation_ms"] is None


def test_targets_are_judged_only_for_their_steps() -> None:
    checks = report.check(report.medians(RUNS))
    lines = [c.line() for c in checks]
    assert "PASS  inprocess at 1000 stacks: lateness p99 ≤ 50 ms (measured 45.00)" in lines
    assert "PASS  inprocess at 1000 stacks: CPU ≤ 2 ms per tick (measured 1.80)" in lines
    assert "FAIL  chain at 500 stacks: lateness p99 ≤ 100 ms (measured 150.00)" in lines
    assert "PASS  inprocess at 100 stacks: propagation p95 ≤ 100 ms (measured 60.00)" in lines
    assert report.check(report.medians(RUNS[1:2])) != []
    assert report.check(report.medians([_run("inprocess", 250, 1.0, 1.0)])) == []


def test_a_skipped_slot_is_not_started_whatever_the_reason() -> None:
    run = _run("inprocess", 1000, 40.0, 1.5, started=5996)
    run.update(ticks_skipped=4, ticks_skipped_busy=4)
    assert report.started_share(run) < 1.0
    assert [c.passed for c in report.check([run]) if "started" in c.target.label] == [False]


def test_a_saved_report_is_rendered_again(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    runs = [dict(r, started_share=1.0) for r in RUNS]
    path.write_text(__import__("json").dumps({"runs": runs, "medians": [], "command": "x"}))
    checks = report.rerender(path, tmp_path / "plots", tmp_path / "r.md")
    assert (tmp_path / "plots" / "lateness.png").exists() and (tmp_path / "r.md").exists()
    saved = __import__("json").loads(path.read_text())
    assert [r["started_share"] for r in saved["runs"]][3] == 5990 / 6000
    assert any(not c.passed for c in checks)


def test_markdown_and_plots(tmp_path: Path) -> None:
    rows = report.medians(RUNS)
    result = {"runs": RUNS, "medians": rows, "version": "0.1.0",
              "machine": {"cpus": 2, "python": "3.12", "platform": "Linux"}}
    text = report.markdown(result, "scripts/loadtest --stacks 100,500,1000 --json r.json")
    assert "scripts/loadtest --stacks 100,500,1000 --json r.json" in text
    assert "| inprocess | 1000 |" in text
    assert "- PASS  inprocess at 1000 stacks: 100% of ticks started (measured 100.0%)" in text
    assert "- FAIL  chain at 500 stacks: lateness p99 ≤ 100 ms" in text
    written = report.plots(rows, tmp_path / "plots")
    assert {p.name for p in written} == {"lateness.png", "cpu_per_tick.png", "started.png",
                                         "propagation.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in report.plots(rows[:1], tmp_path / "few")} == {
        "lateness.png", "cpu_per_tick.png", "started.png"}
