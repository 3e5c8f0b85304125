"""A small run of the scheduler simulation (bench/schedule_sim.py) keeps its invariants: no
tenant over its limit, no node over its capacity, every job finished, the indexed decisions
equal to the plain walk's wherever compared. Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_simulation_keeps_its_invariants(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    argv = [sys.executable, str(ROOT / "bench" / "schedule_sim.py"), "--small"]
    argv += ["--verify", "97", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for mode in ("reservation off", "reservation on"):
        run = figures[mode]
        assert run["finished"] == run["jobs"] == 3000
        assert run["quota_violations"] == 0 and run["node_overcommits"] == 0
        assert run["compared_with_plain_walk"] > 100 and run["mismatches"] == 0
        assert set(run["wait_minutes"]) >= {"priority  -10", "priority  100", "whole-node jobs"}
    # With reservation the longest wait of a whole-node job is bounded; without, it is not.
    off = figures["reservation off"]["wait_minutes"]["whole-node jobs"]["max"]
    on = figures["reservation on"]["wait_minutes"]["whole-node jobs"]["max"]
    assert on < off
