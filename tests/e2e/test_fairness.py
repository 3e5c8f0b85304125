"""Fairness end to end: a table uploaded with a sensitive attribute's column, a real MLP job
on it, and its evaluation reports each group's metrics and the disparities between them,
shown by ``nimbus jobs show``; the column is not one of the model's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nimbus.client import Client
from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess


def loans_csv(path: Path) -> Path:
    """Two informative features; the west's labels are noisier, so its accuracy is lower."""
    rng = np.random.default_rng(4)
    lines = ["income,debt,region,label"]
    for i in range(600):
        region = ["north", "south", "west"][i % 3]
        income, debt = rng.normal(0, 1, size=2)
        label = int(income - debt > 0)
        if region == "west" and rng.random() < 0.3:
            label = 1 - label
        lines.append(f"{income:.4f},{debt:.4f},{region},{['no', 'yes'][label]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_a_job_reports_its_groups_and_their_disparities(
    api: Client, e2e_server: ServerProcess, tmp_path: Path
) -> None:
    version = api.upload_dataset("loans", loans_csv(tmp_path / "loans.csv"), group_column="region")
    assert version.data_schema["features"] == ["income", "debt"]
    assert version.data_schema["groups"] == {
        "column": "region",
        "values": ["north", "south", "west"],
    }
    job = api.wait_job(
        api.submit_job("loans", "mlp", params={"epochs": 8, "lr": 0.01}).id, timeout=240
    )
    assert job.state == "succeeded", job.exit_reason
    evaluation = job.evaluation or {}
    block = evaluation["fairness"]
    assert block["group_column"] == "region"
    groups = block["groups"]
    assert {g: row["count"] for g, row in groups.items()} == version.stats["groups"]["test"]
    # The groups' accuracies, weighted by their sizes, are the overall accuracy.
    weighted = sum(row["accuracy"] * row["count"] for row in groups.values())
    assert weighted / evaluation["support"] == pytest.approx(evaluation["accuracy"], abs=1e-9)
    assert groups["west"]["accuracy"] < min(
        groups["north"]["accuracy"], groups["south"]["accuracy"]
    )
    for name in ("no", "yes"):
        rates = [row["selection_rate"][name] for row in groups.values()]
        gap = block["disparities"][name]["demographic_parity_difference"]
        assert gap == pytest.approx(max(rates) - min(rates), abs=1e-12)
    nimbus = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli"),
            "NIMBUS_URL": e2e_server.url,
            "NIMBUS_TOKEN": e2e_server.admin_token,
            "COLUMNS": "200",
        }
    )
    shown = nimbus("jobs", "show", job.id).stdout
    assert "fairness by region" in shown and "equalized odds diff" in shown
    compared = nimbus("jobs", "compare", job.id, job.id).stdout
    assert "worst demographic parity difference" in compared
