"""How jobs end: cancelled, retries exhausted, user errors, deadlines; and determinism."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.jobs.domain import AttemptState, ExitReason
from tests.e2e.conftest import (
    QUICK_CNN,
    Store,
    job_processes,
    logs_text,
    script,
    wait_for,
)
from tests.helpers import ServerProcess


@pytest.mark.slow
def test_cancelling_a_running_job_ends_its_processes(
    api: Client, digits: str, e2e_server: ServerProcess
) -> None:
    job_id = api.submit_job(digits, "cnn", params={"epochs": "500", "batch_size": "4"}).id
    wait_for("training progress", lambda: api.get_job(job_id).progress, 120)
    assert job_processes(e2e_server.home, job_id)
    api.cancel_job(job_id)
    job = api.wait_job(job_id, timeout=60)
    assert job.state == "cancelled", job
    assert job.evaluation is None
    wait_for("the job's processes to end", lambda: not job_processes(e2e_server.home, job_id), 20)


def test_a_job_killed_by_a_signal_every_time_fails_once_retries_run_out(
    api: Client, digits: str, tmp_path: Path, store: Store
) -> None:
    poison = script(tmp_path, "poison", "import os\n\nos.kill(os.getpid(), 9)\n")
    job_id = api.submit_job(digits, poison, max_retries=2).id
    job = api.wait_job(job_id, timeout=120)
    assert job.state == "failed", job
    assert job.attempts == 3 and job.exit_reason is not None
    assert "SIGKILL" in job.exit_reason and "retries exhausted" in job.exit_reason
    attempts = store.attempts(job_id)
    assert [(a.state, a.exit_reason, a.exit_signal) for a in attempts] == [
        (AttemptState.FAILED, ExitReason.SIGNALED, 9)
    ] * 3


def test_a_script_that_raises_fails_at_once_without_retries(
    api: Client, digits: str, tmp_path: Path, store: Store
) -> None:
    broken = script(tmp_path, "broken", "raise ValueError('labels are not what I expected')\n")
    job_id = api.submit_job(digits, broken, max_retries=3).id
    job = api.wait_job(job_id, timeout=60)
    assert job.state == "failed", job
    assert job.attempts == 1 and "not retried" in (job.exit_reason or "")
    assert [a.exit_reason for a in store.attempts(job_id)] == [ExitReason.USER_ERROR]
    assert "ValueError: labels are not what I expected" in logs_text(api, job_id)


def test_a_job_past_its_deadline_fails(
    api: Client, digits: str, tmp_path: Path, e2e_server: ServerProcess
) -> None:
    sleepy = script(tmp_path, "sleepy", "import time\n\ntime.sleep(300)\n")
    started = time.monotonic()
    job_id = api.submit_job(digits, sleepy, deadline="3s").id
    job = api.wait_job(job_id, timeout=60)
    took = time.monotonic() - started
    assert job.state == "failed", job
    assert "deadline exceeded" in (job.exit_reason or "")
    assert job.deadline_at is not None
    assert 3 <= took < 30
    wait_for("the job's processes to end", lambda: not job_processes(e2e_server.home, job_id), 20)


def test_same_seed_data_and_params_give_identical_metrics(api: Client, digits: str) -> None:
    ids = [api.submit_job(digits, "cnn", params=QUICK_CNN, seed=seed).id for seed in (7, 7, 8)]
    jobs = [api.wait_job(job_id, timeout=120) for job_id in ids]
    assert [j.state for j in jobs] == ["succeeded"] * 3, jobs

    def series(job_id: str) -> dict[str, list[tuple[int, float | None]]]:
        metrics = api.job_metrics(job_id)
        return {name: [(p.step, p.value) for p in points] for name, points in metrics.items()}

    same, twin, other = (series(job_id) for job_id in ids)
    assert set(same) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert len(same["train_loss"]) == int(QUICK_CNN["epochs"])
    assert same == twin
    assert jobs[0].evaluation == jobs[1].evaluation
    assert same["train_loss"] != other["train_loss"]  # the seed does matter
