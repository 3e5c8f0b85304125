"""``nimbus demo`` runs the whole journey so far and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Nimbus


@pytest.mark.slow
def test_demo_json(nimbus: Nimbus) -> None:
    result = nimbus.json("demo")
    assert result["ok"] is True
    assert result["data"]["images"] == 1797
    assert "sklearn.datasets.load_digits" in result["data"]["source"]
    version = result["version"]
    assert version["classes"] == [str(c) for c in range(10)]
    assert sum(s["size"] for s in version["splits"].values()) == 1797
    assert [d["name"] for d in result["datasets"]] == ["digits"]


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
        "Step 1/5",
        "Start an embedded Nimbus server",
        "load_digits",
        "shipped with scikit-learn",
        "digits:1",
        "image-classification",
        "Demo finished",
    ):
        assert text in done.stdout, text
    assert not (tmp_path / "home").exists()  # the demo never touches the user's home
