"""`python -m load_tests.sim_cost`, briefly: it starts `tickwork sim-llm`, drives it at a fixed
rate and reports the simulator's CPU per request and the latency its client saw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_reports_the_simulators_cpu_per_request(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    done = subprocess.run(
        [sys.executable, "-m", "load_tests.sim_cost", "--rate", "40", "--duration", "1.5",
         "--warmup", "0.5", "--latency", "20,40", "--runs", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout)
    run = report["each_run"][0]
    assert run["served"] >= 40 and set(run["statuses"]) == {"200"} and not run["failures"]
    assert 0 < report["median"]["sim_cpu_ms_per_request"] < 50
    assert 20 <= report["median"]["latency_ms_p50"] < 1000
