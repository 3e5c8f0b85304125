"""A job whose processes are SIGKILLed mid-training resumes from its last checkpoint."""

from __future__ import annotations

import pytest

from nimbus.client import Client
from nimbus.jobs.domain import AttemptState, ExitReason
from tests.e2e.conftest import (
    SLOW_CNN,
    Store,
    job_processes,
    kill_job_processes,
    logs_text,
    steps_by_attempt,
    wait_for,
)
from tests.helpers import ServerProcess


@pytest.mark.slow
def test_a_killed_job_resumes_from_its_checkpoint(
    api: Client, digits: str, e2e_server: ServerProcess, store: Store
) -> None:
    epochs = int(SLOW_CNN["epochs"])
    job_id = api.submit_job(digits, "cnn", params=SLOW_CNN, seed=1).id
    checkpointed = wait_for("the first checkpoint", lambda: store.checkpoint_step(job_id), 120)
    assert kill_job_processes(e2e_server.home, job_id), "no process of the job to kill"

    job = api.wait_job(job_id, timeout=180)
    assert job.state == "succeeded", job
    attempts = store.attempts(job_id)
    assert job.attempts == 2, ([(a.state, a.exit_reason, a.exit_signal) for a in attempts], job)
    assert job.evaluation and job.evaluation["accuracy"] > 0.5
    first, second = attempts
    assert (first.state, first.exit_reason, first.exit_signal) == (
        AttemptState.FAILED,
        ExitReason.SIGNALED,
        9,
    )
    assert second.state is AttemptState.SUCCEEDED

    steps = steps_by_attempt(api.job_metrics(job_id), "train_loss")
    before, after = steps[1], steps[2]
    resumed_at = min(after)
    # Epochs checkpointed before the kill are not trained again; at most the one in flight
    # when the process died (logged, not yet checkpointed) is.
    assert resumed_at > checkpointed >= 1
    assert max(before) <= resumed_at <= max(before) + 1
    assert after == list(range(resumed_at, epochs + 1))
    assert sorted(set(before) | set(after)) == list(range(1, epochs + 1))
    text = logs_text(api, job_id)
    assert f"resuming from the checkpoint of epoch {resumed_at - 1}" in text
    assert f"epoch {epochs}/{epochs}" in text
    assert job_processes(e2e_server.home, job_id) == []
