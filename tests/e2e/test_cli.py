"""``nimbus train --follow`` and ``nimbus jobs`` against a real server and real jobs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from nimbus.client import Client
from tests.cli.conftest import Nimbus
from tests.e2e.conftest import QUICK_CNN, script, wait_for
from tests.helpers import ServerProcess


@pytest.fixture
def cli(tmp_path: Path, e2e_server: ServerProcess) -> Nimbus:
    return Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli-home"),
            "NIMBUS_URL": e2e_server.url,
            "NIMBUS_TOKEN": e2e_server.admin_token,
            "COLUMNS": "200",
        }
    )


def params(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--param", f"{key}={value}")]


@pytest.mark.slow
def test_train_follow_then_inspect_the_job(cli: Nimbus, digits: str) -> None:
    result = cli("train", "--dataset", digits, "--model", "cnn", *params(QUICK_CNN), "--follow")
    found = re.search(r"Submitted job (job_\w+)", result.stdout)
    assert found, result.stdout
    job_id = found.group(1)
    assert "epoch 1/2" in result.stdout and "epoch 2/2" in result.stdout
    assert f"job {job_id} succeeded" in result.stdout and "test accuracy" in result.stdout

    shown = cli("jobs", "show", job_id).stdout
    for text in ("succeeded", digits, "epochs=2", "F1 (macro)", "per class", "confusion matrix"):
        assert text in shown, text
    assert cli.json("jobs", "show", job_id)["evaluation"]["accuracy"] > 0.5
    assert "train_loss" in cli("jobs", "metrics", job_id).stdout
    assert len(cli.json("jobs", "metrics", job_id)["metrics"]["val_accuracy"]) == 2
    assert job_id in [j["id"] for j in cli.json("jobs", "list", "--state", "succeeded")["jobs"]]
    assert "epoch 2/2" in cli("jobs", "logs", job_id).stdout
    assert "epoch 2/2" in cli("jobs", "logs", job_id, "-f").stdout  # a finished job: at once

    other = cli.json("train", "--dataset", digits, "--model", "cnn", "--param", "epochs=1")
    assert other["state"] == "queued"
    cli("jobs", "logs", other["id"], "--follow")  # until it ends
    compared = cli("jobs", "compare", job_id, other["id"]).stdout
    assert "accuracy" in compared and "epochs" in compared
    assert [j["id"] for j in cli.json("jobs", "compare", job_id, other["id"])["jobs"]] == [
        job_id,
        other["id"],
    ]


def test_train_follow_exits_with_the_jobs_outcome(
    cli: Nimbus, digits: str, tmp_path: Path, api: Client
) -> None:
    broken = script(tmp_path, "broken", "raise RuntimeError('no GPU here')\n")
    failed = cli(
        "train", "--dataset", digits, "--model", str(broken), "--follow", code=8, job_output=True
    )
    assert "failed" in failed.stderr and "not retried" in failed.stderr
    assert "RuntimeError: no GPU here" in failed.stdout
    as_json = cli(
        "train", "--dataset", digits, "--model", str(broken), "--follow", "--json", code=8
    )
    assert '"state": "failed"' in as_json.stdout

    sleepy = script(tmp_path, "sleepy", "import time\n\nprint('zzz')\ntime.sleep(300)\n")

    def cancel_when_running() -> None:
        job = wait_for(
            "the sleepy job to run",
            lambda: next(
                (j for j in api.list_jobs(state="running") if j.model.startswith("code:")),
                None,
            ),
            60,
        )
        api.cancel_job(job.id)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    cancelled = cli("train", "--dataset", digits, "--model", str(sleepy), "-f", code=9)
    canceller.join()
    assert "was cancelled" in cancelled.stderr
