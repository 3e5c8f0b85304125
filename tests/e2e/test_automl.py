"""AutoML end to end on a real server: ``nimbus automl`` on scikit-learn's bundled
breast_cancer set with a ~8 s budget is one real job; its process is SIGKILLed mid-search
and the retried attempt carries the search on from its checkpoint, within the budget; its
leaderboard comes back with the job, the server registers its best model, which deploys
and answers a v2 inference request."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from nimbus.client import Client
from nimbus.client.automl import leaderboard_of
from nimbus.errors import InvalidInput, NotFound
from nimbus.jobs.domain import AttemptState
from tests.cli.conftest import Nimbus
from tests.e2e.conftest import (
    Store,
    job_processes,
    kill_job_processes,
    logs_text,
    steps_by_attempt,
    wait_for,
)
from tests.e2e.test_studies import cancer_csv
from tests.helpers import ServerProcess

BUDGET = 8.0
KILL_AFTER = 2  # trials checkpointed when the job's processes are SIGKILLed


@pytest.mark.slow
def test_automl_searches_within_its_budget_and_its_best_model_serves(
    api: Client, e2e_server: ServerProcess, store: Store, tmp_path: Path
) -> None:
    nimbus = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli-home"),
            "NIMBUS_URL": e2e_server.url,
            "NIMBUS_TOKEN": e2e_server.admin_token,
            "COLUMNS": "200",
        }
    )
    api.upload_dataset("cancer", cancer_csv(tmp_path / "cancer.csv"), task="tabular-classification")
    # bad input is refused before a job exists, naming what is wrong
    common = ["automl", "--dataset", "cancer"]
    assert "invalid budget" in nimbus(*common, "--budget", "0s", code=2).stderr
    assert "'metric'" in nimbus(*common, "--budget", "9s", "--metric", "auc", code=2).stderr
    for budget in ("0", "soon", -5):  # the server's own check (the SDK's is skipped)
        with pytest.raises(InvalidInput, match="'budget'"):
            api.submit_job("cancer", "automl", params={"budget": budget})
    with pytest.raises(InvalidInput, match="one worker"):
        api.submit_job("cancer", "automl", params={"budget": 5}, workers=2)
    with pytest.raises(NotFound):
        api.start_automl("no-such-set", "10s")

    killed: list[int] = []

    def kill_mid_search() -> None:  # while the CLI follows the job
        def running() -> str | None:
            return next((j.id for j in api.list_jobs() if j.state == "running"), None)

        job_id = wait_for("the automl job to run", running, 60)
        wait_for("its checkpoints", lambda: (store.checkpoint_step(job_id) or 0) >= KILL_AFTER)
        killed.append(store.checkpoint_step(job_id) or 0)
        assert kill_job_processes(e2e_server.home, job_id)

    killer = threading.Thread(target=kill_mid_search, daemon=True)
    killer.start()
    done = nimbus(
        *common,
        "--budget",
        f"{BUDGET:g}s",
        "--metric",
        "balanced_accuracy",
        "--seed",
        "3",
        "--register",
        "cancer-auto",
        "--follow",
        job_output=True,
    )
    killer.join(timeout=5)
    assert killed, "the job's processes were not killed"
    assert "leaderboard" in done.stdout
    assert "The server registered the best model as cancer-auto:1" in done.stdout
    job = next(j for j in api.list_jobs() if j.model == "automl")
    # the killed attempt, then the one that resumed (on a loaded machine an earlier one may
    # have been lost: its process not heartbeating within the lease, before any trial)
    attempts = [(a.state, a.exit_reason, a.exit_signal) for a in store.attempts(job.id)]
    assert job.state == "succeeded", (attempts, logs_text(api, job.id))
    assert [a[2] for a in attempts[-2:]] == [9, None], attempts
    assert attempts[-1][0] is AttemptState.SUCCEEDED, attempts
    killed_attempt, resumed_attempt = len(attempts) - 1, len(attempts)
    board = leaderboard_of(job)
    assert board is not None and board["metric"] == "balanced_accuracy"
    # The second attempt carried the first's checkpointed trials (at most the one in flight
    # at the kill is lost) and spent what was left of the budget, which counts wall time
    # across both attempts, the restart included (search_seconds).
    carried = board["resumed_trials"]
    assert carried >= killed[0], (board, killed)
    metrics = api.job_metrics(job.id)
    steps = steps_by_attempt(metrics, "fit_seconds")
    assert killed[0] <= max(steps[killed_attempt]) <= carried + 1  # + the one in flight
    assert steps.get(resumed_attempt, [carried + 1])[0] == carried + 1  # numbered on
    # the leaderboard holds the killed attempt's trials with the scores it measured
    by_trial = {r["trial"]: r for r in board["leaderboard"]}
    # the job's result keeps the best 25 rows (six families' cheap fits can pass 25 trials)
    assert len(by_trial) == min(board["trials"], 25)
    assert set(by_trial) <= set(range(1, board["trials"] + 1))
    for point in metrics["val_score"]:
        if point.attempt == killed_attempt and point.step <= carried and point.step in by_trial:
            assert by_trial[point.step]["score"] == pytest.approx(point.value, abs=1e-6)
    assert BUDGET * 0.5 <= board["search_seconds"] <= BUDGET * 1.1, board["search_seconds"]
    assert board["registered"] == {"model": "cancer-auto", "version": 1, "created": True}
    assert job_processes(e2e_server.home, job.id) == []
    rows = board["leaderboard"]
    assert len(rows) == min(board["trials"], 25) >= 4
    assert len({r["family"] for r in rows}) >= 3  # several families searched
    assert board["validation"] == "5-fold cross-validation on train + val"
    scores = [r["score"] for r in rows if r["score"] is not None]
    assert scores == sorted(scores, reverse=True)
    # the winner: the lowest log loss within a standard error of the top score
    best = board["best"]
    assert best["score"] <= rows[0]["score"] and 1 <= best["trial"] <= board["trials"]
    assert all(r["log_loss"] >= best["log_loss"] for r in rows if r["score"] == best["score"])
    assert job.evaluation is not None and job.evaluation["accuracy"] > 0.85
    assert "leaderboard.json" in {a.name for a in job.artifacts}
    shown = nimbus("jobs", "show", job.id).stdout
    assert "leaderboard" in shown and rows[0]["family"] in shown
    assert "registered as cancer-auto:1" in shown and "carried from an earlier attempt" in shown

    model = api.get_model_version("cancer-auto:1")
    assert model.job == job.id
    assert model.spec["architecture"] in {
        "mlp",
        "sklearn-logistic-regression",
        "sklearn-random-forest",
        "sklearn-gradient-boosting",
        "sklearn-extra-trees",
        "sklearn-svm",
        "sklearn-linear-discriminant",
    }
    api.create_deployment("cancer-auto", "cancer-auto:1")
    api.wait_deployment("cancer-auto", timeout=120)
    try:
        from sklearn.datasets import load_breast_cancer

        x = load_breast_cancer().data[:5].astype(np.float32)
        probabilities = api.infer("cancer-auto", x)["probabilities"]
        assert probabilities.shape == (5, 2)
        assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    finally:
        api.delete_deployment("cancer-auto")
