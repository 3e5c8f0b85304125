"""The server registers an AutoML job's winner once the job succeeded (its
``params.register``): with lineage and the leaderboard in its card, one audit event, a note
on the job; exactly once, also when a control plane is SIGKILLed between registering and
settling."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from nimbus.db import automl as repo
from nimbus.db import registry as models_repo
from nimbus.db.engine import Database
from nimbus.db.tables import AuditEvent, JobRow, utcnow
from nimbus.jobs.domain import JobState
from nimbus.security import Principal
from nimbus.services.automl_register import AutomlRegistrations
from nimbus.services.models import ModelService, VersionRef
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store
from tests.helpers_models import add_job, image_model_dir

BOARD = {
    "metric": "accuracy",
    "budget_seconds": 8.0,
    "search_seconds": 7.9,
    "trials": 12,
    "validation": "the val split",
    "best": {"trial": 4, "family": "cnn", "params": {"epochs": 2}, "score": 0.91},
    "leaderboard": [{"trial": 4, "family": "cnn", "params": {"epochs": 2}, "score": 0.91}],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_model_dir(tmp_path_factory.mktemp("automl-register") / "m", 1)


@pytest.fixture
def setup(
    db: Database, blobs: BlobStore, tmp_path: Path, make_principal: Callable[..., Principal]
) -> tuple[ModelService, AutomlRegistrations, Principal]:
    models = ModelService(db, blobs, tmp_dir=tmp_path / "tmp")
    return models, AutomlRegistrations(db, models.register), make_principal("acme")


def automl_job(
    db: Database, blobs: BlobStore, model_dir: Path | None, state: JobState = JobState.SUCCEEDED
) -> str:
    evaluation = {"accuracy": 0.5, "support": 10, "automl": BOARD}
    job_id = add_job(db, blobs, "acme", model_dir, state=state, evaluation=evaluation)
    with db.session(write=True) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        repo.add(session, job_id, job.tenant_id, "auto", utcnow())
    return job_id


def audits(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "POST")).all()
        return [r for r in rows if (r.detail or {}).get("by") == "automl"]


def registered(db: Database, job_id: str) -> dict[str, object]:
    with db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None and job.result is not None
        return dict(job.result["evaluation"]["automl"]["registered"])


def test_a_succeeded_automl_job_is_registered_once(
    db: Database,
    blobs: BlobStore,
    model_dir: Path,
    setup: tuple[ModelService, AutomlRegistrations, Principal],
) -> None:
    models, registrations, who = setup
    running = automl_job(db, blobs, model_dir, JobState.RUNNING)
    job_id = automl_job(db, blobs, model_dir)
    assert registrations.settle() == 1  # the running job waits for its end
    assert registrations.settle() == 0
    version = models.get_version(who, "auto", VersionRef(1))
    assert version.job == job_id and version.version == 1
    with db.session() as session:
        model = models_repo.get_model(session, who.tenant_id, "auto")
        row = models_repo.get_version(session, model.id, 1)  # type: ignore[union-attr]
        assert row is not None and row.card is not None
        assert "12 trials" in row.card["description"]
        assert "trial 4: cnn" in row.card["description"]
    assert registered(db, job_id) == {"model": "auto", "version": 1, "created": True}
    [event] = audits(db)
    assert (event.resource, event.status, event.detail["job"]) == (  # type: ignore[index]
        "/api/v1/models/auto/versions",
        201,
        job_id,
    )
    with db.session() as session:
        assert repo.get(session, running).state == repo.PENDING  # type: ignore[union-attr]


def test_a_control_plane_killed_between_registering_and_settling_registers_once(
    tmp_path: Path, model_dir: Path, make_principal: Callable[..., Principal], db: Database
) -> None:
    """A real SIGKILL of a process settling the registration, right after the registry
    committed the version; the next round (another control plane) settles it, once."""
    who = make_principal("acme")
    blobs = BlobStore(open_object_store(f"file://{tmp_path / 'blobs'}"), tmp_path / "staging")
    job_id = automl_job(db, blobs, model_dir)
    marker = tmp_path / "registered"
    url = db.engine.url.render_as_string(hide_password=False)
    module = "tests.services.automl_settle_crash"
    args = [url, str(tmp_path), job_id, str(marker)]
    child = subprocess.Popen([sys.executable, "-m", module, *args])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, child.returncode
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL
        child.wait()
    with db.session() as session:
        assert repo.get(session, job_id).state == repo.PENDING  # type: ignore[union-attr]
    models = ModelService(db, blobs, tmp_dir=tmp_path / "tmp")
    assert AutomlRegistrations(db, models.register).settle() == 1
    with db.session() as session:
        model = models_repo.get_model(session, who.tenant_id, "auto")
        assert model is not None and len(models_repo.list_versions(session, model.id)) == 1
        assert repo.get(session, job_id).state == repo.REGISTERED  # type: ignore[union-attr]
    assert registered(db, job_id) == {"model": "auto", "version": 1, "created": False}
    assert len(audits(db)) == 1


def test_failed_jobs_and_refusals_are_settled_without_a_version(
    db: Database,
    blobs: BlobStore,
    model_dir: Path,
    setup: tuple[ModelService, AutomlRegistrations, Principal],
) -> None:
    _, registrations, _ = setup
    failed = automl_job(db, blobs, model_dir, JobState.FAILED)
    no_model = automl_job(db, blobs, None)  # succeeded, but left no model files
    assert registrations.settle() == 2
    with db.session() as session:
        assert repo.get(session, failed).state == repo.SKIPPED  # type: ignore[union-attr]
        refused = repo.get(session, no_model)
        assert refused is not None and refused.state == repo.FAILED
        assert "no model artifacts" in (refused.reason or "")
        assert models_repo.get_model(session, 1, "auto") is None
    assert "no model artifacts" in str(registered(db, no_model)["error"])
    [event] = audits(db)
    assert event.status == 400
