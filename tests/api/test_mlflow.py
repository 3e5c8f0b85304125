"""The real MLflow client (mlflow-skinny) against a real Nimbus server: the tracking calls
a training script makes, artifacts, the model registry, and what Nimbus shows of it; tenant
isolation and the viewer role in MLflow's error format. One server for the module."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import httpx
import pytest

from nimbus.client import Client
from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess
from tests.helpers_models import insert_job

if TYPE_CHECKING:
    from mlflow import MlflowClient

API = "/api/v1"


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    """The MLflow client library, imported by the tests that use it (it takes seconds to
    import, which every pytest worker would pay at collection)."""
    import mlflow

    return mlflow


@pytest.fixture
def as_token(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, mlflow: ModuleType
) -> Iterator[Callable[[str], MlflowClient]]:
    """``as_token(secret)``: the MLflow client as configured by its environment variables,
    pointed at the server with that token; a run left active is ended afterwards."""

    def use(secret: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
        client: MlflowClient = mlflow.MlflowClient()
        return client

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    yield use
    if mlflow.active_run() is not None:
        mlflow.end_run()


def test_the_client_logs_a_run_end_to_end(
    mlflow: ModuleType,
    shared_server: ServerProcess,
    token_for: Callable[..., str],
    as_token: Callable[[str], MlflowClient],
    tmp_path: Path,
) -> None:
    secret = token_for("member")
    client = as_token(secret)
    experiment_id = mlflow.set_experiment("mnist-mlflow").experiment_id
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "notes.txt").write_text("hello from mlflow\n")
    with mlflow.start_run(run_name="lr-sweep-1") as run:
        run_id = run.info.run_id
        mlflow.log_params({"lr": 0.01, "epochs": 3})
        mlflow.set_tag("team", "vision")
        for step, loss in enumerate([0.9, 0.5, 0.3]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"acc": 0.93})
        mlflow.log_artifact(str(tmp_path / "notes.txt"))
        mlflow.log_artifacts(str(model_dir), artifact_path="model")

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "lr-sweep-1"
    assert got.info.experiment_id == experiment_id
    assert got.data.params == {"lr": "0.01", "epochs": "3"}
    assert got.data.metrics == {"loss": 0.3, "acc": 0.93}
    assert got.data.tags["team"] == "vision"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]

    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["model", "notes.txt"]
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/MLmodel"]
    local = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "down"))
    assert Path(local).read_text() == "hello from mlflow\n"
    digest = hashlib.sha256(b"hello from mlflow\n").hexdigest()  # content-addressed, as all
    assert (shared_server.home / "blobs" / "sha256" / digest[:2] / digest).is_file()

    found = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="metrics.acc > 0.9 and params.lr = '0.01'"
    )
    assert list(found["run_id"]) == [run_id]
    assert mlflow.search_runs([experiment_id], "tags.team = 'audio'").empty
    assert [e.name for e in mlflow.search_experiments(filter_string="name = 'mnist-mlflow'")] == [
        "mnist-mlflow"
    ]

    version = mlflow.register_model(f"runs:/{run_id}/model", "mnist-classifier")
    assert version.version == "1" and version.status == "READY"
    assert version.run_id == run_id
    client.set_registered_model_alias("mnist-classifier", "champion", "1")
    assert client.get_model_version_by_alias("mnist-classifier", "champion").version == "1"
    assert client.get_registered_model("mnist-classifier").aliases == {"champion": "1"}
    assert [v.version for v in client.search_model_versions("name = 'mnist-classifier'")] == ["1"]

    # Nimbus's own view: the SDK, and the CLI comparing the run with a job (read as a run).
    with Client(shared_server.url, token=secret) as sdk:
        [listed] = [r for r in sdk.list_runs("mnist-mlflow") if r.id == run_id]
    assert listed.metrics == {"loss": 0.3, "acc": 0.93}
    assert listed.params == {"lr": "0.01", "epochs": "3"}
    assert listed.artifacts == ["model/MLmodel", "notes.txt"]
    assert listed.status == "FINISHED" and listed.experiment == "mnist-mlflow"
    job_id = insert_job(shared_server.home, "default", None)
    assert client.get_run(job_id).data.params == {"epochs": "1"}
    assert client.get_run(job_id).info.status == "FINISHED"
    assert job_id in [r.info.run_id for r in client.search_runs(["jobs"])]
    cli = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli-home"),
            "NIMBUS_URL": shared_server.url,
            "NIMBUS_TOKEN": secret,
            "COLUMNS": "200",
        }
    )
    compared = cli.json("runs", "compare", run_id, job_id)["runs"]
    assert [(r["id"], r["experiment"]) for r in compared] == [
        (run_id, "mnist-mlflow"),
        (job_id, "jobs"),
    ]
    assert run_id in cli("runs", "list", "--experiment", "mnist-mlflow").stdout

    # And the console: the runs' page (linked from Jobs) and the run's own.
    with console_session(shared_server, secret) as browser:
        assert 'href="/runs"' in browser.get("/jobs").text
        listing = browser.get("/runs")
        assert listing.status_code == 200 and f"/runs/{run_id}" in listing.text
        page = browser.get(f"/runs/{run_id}").text
        assert "lr-sweep-1" in page and "model/MLmodel" in page and "vision" in page
    with console_session(shared_server, token_for("member", tenant="other-team")) as browser:
        assert run_id not in browser.get("/runs").text
        assert browser.get(f"/runs/{run_id}").status_code == 404


@contextlib.contextmanager
def console_session(server: ServerProcess, token: str) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the console as a person is (the form, its nonce)."""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        form = browser.get("/login").text
        found = re.search(r'name="nonce" value="([^"]+)"', form)
        assert found is not None, form
        signed = browser.post("/login", data={"token": token, "nonce": found[1], "next": "/"})
        assert signed.status_code in (302, 303), signed.text
        yield browser


def test_other_tenants_and_viewers(
    mlflow: ModuleType,
    shared_server: ServerProcess,
    token_for: Callable[..., str],
    as_token: Callable[[str], MlflowClient],
) -> None:
    client = as_token(token_for("member"))
    experiment_id = client.create_experiment("isolated")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "x", 1.0)

    stranger = as_token(token_for("member", tenant="other-team"))
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        stranger.get_run(run_id)
    assert refused.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        stranger.log_metric(run_id, "x", 2.0)
    assert refused.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert stranger.search_runs([experiment_id]) == []
    assert stranger.get_experiment_by_name("isolated") is None

    viewer = as_token(token_for("viewer"))
    assert viewer.get_run(run_id).data.metrics == {"x": 1.0}
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        viewer.log_metric(run_id, "x", 3.0)
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        viewer.create_experiment("not-allowed")
    assert refused.value.error_code == "PERMISSION_DENIED"


def test_errors_are_in_mlflow_format(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    with shared_server.client(token_for("member")) as http:
        missing = http.get("/api/2.0/mlflow/runs/get", params={"run_id": "0" * 32})
        assert missing.status_code == 404
        assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        bad = http.post("/api/2.0/mlflow/runs/log-metric", json={"run_id": "x", "key": "k"})
        assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "value" in bad.json()["message"]
        http.post("/api/2.0/mlflow/experiments/create", json={"name": "twice"})
        again = http.post("/api/2.0/mlflow/experiments/create", json={"name": "twice"})
        assert again.status_code == 409
        assert again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
        unsafe = http.get(
            "/api/2.0/mlflow-artifacts/artifacts", params={"path": "1/r/artifacts/../x"}
        )
        assert unsafe.status_code == 400 and "unsafe" in unsafe.json()["message"]
    anonymous = httpx.post(f"{shared_server.url}/api/2.0/mlflow/experiments/search", json={})
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
