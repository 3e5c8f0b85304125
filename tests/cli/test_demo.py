"""``nimbus demo`` runs the whole journey (data, training, evaluation, comparison, serving)
and exits 0. It runs once here, through the real entry point as a user runs it (the demo
fails itself when a model scores below its mark or /predict and /infer disagree); --json
and --keep are checked on a shorter journey in tests/cli/test_ui.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.cli.demo import STEPS
from nimbus.demo_data import intents, write_intents_csv


def test_the_intents_are_generated_reproducibly(tmp_path: Path) -> None:
    first = write_intents_csv(tmp_path / "a.csv", per_intent=20, seed=3)
    second = write_intents_csv(tmp_path / "b.csv", per_intent=20, seed=3)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.count == 160 and set(first.per_class.values()) == {20}
    assert {"refund", "shipping", "password", "cancel"} <= set(first.classes)
    lines = first.path.read_text().splitlines()
    assert lines[0] == "text,label" and len(lines) == 161
    assert intents(20, seed=4) != intents(20, seed=3)


@pytest.mark.slow
def test_demo_console_script(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: headings, the table, exit 0, server gone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env.update(NIMBUS_HOME=str(tmp_path / "home"), COLUMNS="120")
    done = subprocess.run(
        [sys.executable, "-c", "from nimbus.cli.app import main; main()", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    for text in (
        f"Step 1/{len(STEPS)}",
        "Start an embedded Nimbus server",
        "load_digits",
        "1797 PNG images",
        "shipped with scikit-learn",
        "digits:1",
        "image-classification",
        "epoch 1/12",
        "best_epoch",  # early stopping may end it before epoch 12
        "confusion matrix",
        "support-intents:1",
        "generated",
        "F1 (macro)",
        "Compare the two training runs",
        "nimbus deploy",
        "/predict and /infer agree",
        "Demo finished",
        "nimbus demo --keep",  # how to open the console on the demo's data
    ):
        assert text in done.stdout, text
    assert not (tmp_path / "home").exists()  # the demo never touches the user's home
