"""A study end to end on a real server: its trials are real jobs of the built-in MLP on
scikit-learn's bundled breast_cancer set (no download), run two at a time; the study ends
with a best trial, whose model it registers, read through the REST API."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import make_token
from tests.cli.conftest import Nimbus
from tests.e2e.conftest import client_for, script, start_server
from tests.helpers import ServerProcess


def cancer_csv(path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    lines = [",".join([*(f"f{i}" for i in range(bunch.data.shape[1])), "label"])]
    for row, target in zip(bunch.data, bunch.target, strict=True):
        lines.append(",".join([*(f"{v:.6g}" for v in row), str(bunch.target_names[target])]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = start_server(
        tmp_path_factory.mktemp("studies") / "home", NIMBUS_STUDY_TICK_SECONDS="0.2"
    )
    yield server
    server.stop()


def wait_study(
    server: ServerProcess, study_id: str, timeout: float = 240, token: str | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with server.client(token) as http:
        while True:
            study: dict[str, Any] = http.get(f"/api/v1/studies/{study_id}").json()
            if study["state"] != "running":
                return study
            assert time.monotonic() < deadline, study
            time.sleep(0.5)


@pytest.mark.slow
def test_a_study_of_real_jobs_ends_with_its_best_trial(
    server: ServerProcess, tmp_path: Path
) -> None:
    with client_for(server) as api:
        api.upload_dataset(
            "cancer", cancer_csv(tmp_path / "cancer.csv"), task="tabular-classification"
        )
    lr = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    body: dict[str, Any] = {
        "dataset": "cancer",
        "model": "mlp",
        "params": {"lr": lr, "epochs": 3},
        "metric": "val_accuracy",
        "trials": 3,
        "parallel": 2,
        "seed": 7,
        "pruner": "none",
        "register_as": "cancer-best",
    }
    with server.client() as http:
        created = http.post("/api/v1/studies", json=body)
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        bad = http.post("/api/v1/studies", json={**body, "params": {"width": lr}})
        assert bad.status_code == 400 and "takes none such" in bad.text
    study = wait_study(server, study_id)
    assert study["state"] == "succeeded", study
    assert study["counts"] == {"complete": 3}
    with server.client() as http:
        trials = http.get(f"/api/v1/studies/{study_id}/trials").json()["trials"]
        jobs = [http.get(f"/api/v1/jobs/{t['job']}").json() for t in trials]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(j["state"] == "succeeded" and j["params"]["epochs"] == 3 for j in jobs)
    assert study["best"]["value"] == max(t["value"] for t in trials)
    # The best trial's model is registered, its version made from that trial's job.
    assert "registered as cancer-best" in study["reason"]
    with server.client() as http:
        version = http.get("/api/v1/models/cancer-best/versions/1").json()
    assert version["job"] == study["best"]["job"], version


@pytest.mark.slow
def test_asha_prunes_real_trials_within_the_tenants_quota(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Six trials, two at a time by the study, but the tenant may hold one job: the trials
    run one after the other, ASHA stops the ones behind at their first epochs, their jobs
    end, and the study ends with a complete best trial. A viewer of the tenant can read
    but neither start nor cancel; another tenant sees none of it."""
    member, viewer = make_token(server, "member", "tuners"), make_token(server, "viewer", "tuners")
    other = make_token(server, "member", "others")
    with server.client() as operator:
        assert operator.put("/api/v1/quotas/tuners", json={"jobs": 1}).status_code == 200
    with server.client(member) as http:
        csv = cancer_csv(tmp_path / "cancer.csv").read_bytes()
        uploaded = http.post(
            "/api/v1/datasets/cancer/versions",
            params={"filename": "cancer.csv", "task": "tabular-classification"},
            content=csv,
        )
        assert uploaded.status_code == 201, uploaded.text
        body: dict[str, Any] = {
            "dataset": "cancer",
            "model": "mlp",
            "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
            "metric": "val_loss",
            "direction": "minimize",
            "trials": 6,
            "parallel": 2,
            "seed": 3,
            "pruner": "asha",
        }
        body["params"] |= {"epochs": 8, "batch_size": 2}
        created = http.post("/api/v1/studies", json=body)
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
    with server.client(viewer) as http:
        assert http.get(f"/api/v1/studies/{study_id}").status_code == 200
        assert http.post("/api/v1/studies", json=body).status_code == 403
        assert http.post(f"/api/v1/studies/{study_id}/cancel").status_code == 403
    with server.client(other) as http:
        assert http.get(f"/api/v1/studies/{study_id}").status_code == 404
        assert http.get("/api/v1/studies").json()["studies"] == []
    study = wait_study(server, study_id, token=member)
    assert study["state"] == "succeeded", study
    with server.client(member) as http:
        trials = http.get(f"/api/v1/studies/{study_id}/trials").json()["trials"]
        jobs = {t["job"]: http.get(f"/api/v1/jobs/{t['job']}").json() for t in trials}
        epochs = {
            t["number"]: len(
                http.get(f"/api/v1/jobs/{t['job']}/metrics").json()["metrics"]["val_loss"]
            )
            for t in trials
        }
    assert [t["number"] for t in trials] == list(range(6))
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and study["counts"] == {"complete": 6 - len(pruned), "pruned": len(pruned)}
    assert study["best"]["number"] in [t["number"] for t in trials if t["state"] == "complete"]
    for t in pruned:  # stopped early, its job ended, the value kept where it stopped
        assert t["pruned_step"] < 8 and t["value"] is not None
        assert jobs[t["job"]]["state"] != "running" and epochs[t["number"]] < 8
    # The quota held: each trial's job was created only after the one before had ended.
    spans = sorted((j["created_at"], j["finished_at"]) for j in jobs.values())
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))
    # The pruned trials spent fewer epochs than they would have.
    assert sum(epochs.values()) < 6 * 8


@pytest.mark.slow
def test_the_cli_tunes_follows_and_shows_a_study(server: ServerProcess, tmp_path: Path) -> None:
    nimbus = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli-home"),
            "NIMBUS_URL": server.url,
            "NIMBUS_TOKEN": server.admin_token,
            "COLUMNS": "200",
        }
    )
    with client_for(server) as api:
        api.upload_dataset(
            "cancer", cancer_csv(tmp_path / "cancer.csv"), task="tabular-classification"
        )
    common = ["tune", "--dataset", "cancer", "--model", "mlp", "--param", "epochs=2"]
    refused = nimbus(*common, "--param", "lr=gauss(0,1)", code=2)
    assert "unknown distribution 'gauss'" in refused.stderr
    refused = nimbus(*common, "--param", "width=int(8,64)", code=2)
    assert "the mlp model takes none such" in refused.stderr
    study = nimbus.json(
        *common,
        "--param",
        "hidden=choice(16,32)",
        "--sampler",
        "grid",
        "--trials",
        "2",
        "--parallel",
        "2",
        "--pruner",
        "none",
        "--follow",
    )
    assert study["state"] == "succeeded", study
    shown = nimbus("studies", "show", study["id"]).stdout
    assert "Best: trial" in shown and "History" in shown and "hidden" in shown
    assert "Parameter importances: after 4 complete trials (2 so far)" in shown
    best = nimbus.json("studies", "best", study["id"])
    assert best["params"]["hidden"] in (16, 32) and best["value"] is not None
    listed = nimbus.json("studies", "list")["studies"]
    assert study["id"] in [s["id"] for s in listed]


@pytest.mark.slow
def test_a_control_plane_killed_mid_study_loses_and_repeats_no_trial(tmp_path: Path) -> None:
    """kill -9 of the server while trials run and more are due; a restart on the same home
    carries the study on: every trial number once, each trial's job run to one end, none
    left running, and the study ends with its best trial."""
    home = tmp_path / "home"
    server = start_server(home, NIMBUS_STUDY_TICK_SECONDS="0.2")
    try:
        with client_for(server) as api:
            api.upload_dataset(
                "cancer", cancer_csv(tmp_path / "cancer.csv"), task="tabular-classification"
            )
            study = api.start_study(
                "cancer",
                "mlp",
                ["lr=loguniform(1e-3,1e-1)", "epochs=8"],
                trials=5,
                parallel=2,
                seed=3,
                pruner="none",
            )

            def two_running() -> bool:
                trials = api.study_trials(study.id).trials
                return sum(t.state == "running" for t in trials) == 2

            deadline = time.monotonic() + 120
            while not two_running():
                assert time.monotonic() < deadline, api.study_trials(study.id)
                time.sleep(0.2)
        server.kill()
        server = start_server(home, port=server.port, NIMBUS_STUDY_TICK_SECONDS="0.2")
        ended = wait_study(server, study.id, timeout=300)
        assert ended["state"] == "succeeded", ended
        with client_for(server) as api:
            trials = api.study_trials(study.id).trials
            assert [t.number for t in trials] == [0, 1, 2, 3, 4]
            assert len({t.job for t in trials}) == 5
            assert all(t.state == "complete" and t.value is not None for t in trials), trials
            for trial in trials:
                assert api.get_job(trial.job).state == "succeeded"
            # No job of the study outside its trials: none was queued twice.
            jobs = api.list_jobs()
            assert len(jobs) == 5, [j.id for j in jobs]
    finally:
        server.stop()


PACED_SCRIPT = """
import math, time
from nimbus import runtime as nr
lr = float(nr.params["lr"])
score = 1.0 - abs(math.log10(lr) + 2) / 4  # best at lr = 1e-2
for epoch in range(1, 7):
    time.sleep(1.0)
    nr.log(epoch, val_accuracy=score + epoch * 1e-3)
"""


def test_a_trial_is_judged_when_it_reports_an_epoch_not_at_the_next_tick(
    tmp_path: Path,
) -> None:
    """The study's tick is 60 s here: every round runs because something woke it (the study
    created, a trial's epoch reported, a job ended). A trial behind the median of those
    before it is pruned seconds into its six epochs (the median pruner: from the third
    trial, after epoch 1), where without the wake it would run to its end."""
    server = start_server(tmp_path / "home", NIMBUS_STUDY_TICK_SECONDS="60")
    try:
        with client_for(server) as api:
            api.upload_dataset(
                "cancer", cancer_csv(tmp_path / "cancer.csv"), task="tabular-classification"
            )
            began = time.monotonic()
            study = api.start_study(
                "cancer",
                str(script(tmp_path, "paced", PACED_SCRIPT)),
                {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
                trials=4,
                parallel=1,
                seed=11,  # its third and fourth trials fall behind the first two
                pruner="median",
            )
            done = wait_study(server, study.id, timeout=58)
            took = time.monotonic() - began
            trials = api.study_trials(study.id).trials
        assert done["state"] == "succeeded", done
        assert took < 58, took  # no round waited for the tick
        pruned = [t for t in trials if t.state == "pruned"]
        assert pruned, [(t.state, t.params, t.value) for t in trials]
        assert all(t.pruned_step is not None and t.pruned_step <= 2 for t in pruned), pruned
    finally:
        server.stop()
