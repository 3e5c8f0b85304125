"""A smoke run of the studies benchmark (bench/tune.py --quick): its in-process studies run
every trial through the service's decisions and the job's training code, and count what
they trained. Nothing here is timed; the server part (part 3) is left to the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_of_the_in_process_studies(tmp_path: Path) -> None:
    out = tmp_path / "tune.json"
    argv = [sys.executable, str(ROOT / "bench" / "tune.py"), "--quick"]
    argv += ["--skip", "loss,platform", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    samplers = figures["samplers"]
    assert samplers["seeds"] == [0, 1000]
    assert samplers["trials"] == [5, 5, 5, 5]  # every study ran its budget
    # 5 trials are all TPE's random start (startup_trials: 10 at least), seeded as the
    # random study's: the two ask for the same trials.
    assert samplers["shared_start"] == [5, 5]
    assert samplers["tpe_best"] == samplers["random_best"]
    for value in samplers["tpe_best"] + samplers["random_best"]:
        assert 0.5 < value <= 1.0  # a validation accuracy, of a model that learned
    (asha,) = figures["pruning"]
    # An unpruned trial trains its 2 epochs (early stopping needs more); a pruned one only
    # the first (ASHA's first rung is at epoch 1, the next at 4): every epoch is counted.
    assert asha["full_epochs"] == [10, 10]
    pruned = asha["pruned_trials"]
    assert sum(pruned) >= 1
    assert asha["pruned_epochs"] == [10 - n for n in pruned]
    assert asha["epochs_histogram"] == {"1": sum(pruned), "2": 10 - sum(pruned)}
    assert "TPE as good as random or better in" in done.stdout
