"""The studies repository on both metadata store backends (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from nimbus.db import jobs as jobs_repo
from nimbus.db import studies as repo
from nimbus.db.engine import Database
from nimbus.db.tables import StudyTrialRow
from nimbus.errors import NotFound
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import JobSpec
from nimbus.studies.search import TrialState

T0 = datetime(2030, 1, 1, tzinfo=UTC)
BIG = Capacity(cpus=64, gpus=8, memory_bytes=1 << 40)
SEARCH = {"space": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}}


def new_study(db: Database, tenant: int = 1, at: float = 0) -> str:
    with db.session(write=True) as s:
        row = repo.create(
            s,
            tenant_id=tenant,
            search=SEARCH,
            job={"model": "mlp", "dataset": "iris:1"},
            created_by="tok_1",
            now=T0 + timedelta(seconds=at),
        )
        return row.id


def new_job(db: Database) -> str:
    with db.session(write=True) as s:
        return jobs_repo.submit(s, 1, JobSpec(model="mlp", dataset="iris"), T0, capacity=BIG).id


def test_the_migration_creates_the_study_tables(db: Database) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert {"studies", "study_trials"} <= names


def test_a_study_belongs_to_its_tenant(db: Database) -> None:
    first, second = new_study(db, at=0), new_study(db, at=1)
    new_study(db, tenant=2)
    with db.session() as s:
        assert repo.get(s, 1, first).search == SEARCH
        assert [r.id for r in repo.list_for(s, 1)] == [second, first]
        with pytest.raises(NotFound, match=f"no study {first}"):
            repo.get(s, 2, first)
        assert {r.id for r in repo.running(s)} >= {first, second}


def test_a_trial_number_is_recorded_once(db: Database) -> None:
    study = new_study(db)
    job_a, job_b = new_job(db), new_job(db)
    with db.session(write=True) as s:
        first = repo.add_trial(
            s, study, 0, job_id=job_a, params={"lr": 0.01}, system_attrs={}, now=T0
        )
        assert first is not None and first.state == "running"
    with db.session(write=True) as s:
        again = repo.add_trial(
            s, study, 0, job_id=job_b, params={"lr": 0.02}, system_attrs={}, now=T0
        )
        assert again is None  # the number is taken: nothing recorded, the session usable
        assert repo.count(s, study) == 1
    with db.session() as s:
        rows = repo.trials(s, study)
        assert [(r.number, r.job_id, r.params) for r in rows] == [(0, job_a, {"lr": 0.01})]
        other = new_study(db)
        by_study = repo.trials_of(s, [study, other])  # a list's trials in one query
        assert [r.job_id for r in by_study[study]] == [job_a] and by_study[other] == []


def test_a_trial_ends_once_and_only_a_complete_one_has_a_value(db: Database) -> None:
    study = new_study(db)
    jobs = [new_job(db) for _ in range(3)]
    with db.session(write=True) as s:
        for number, job in enumerate(jobs):
            repo.add_trial(
                s, study, number, job_id=job, params={"lr": 0.1}, system_attrs={"g": 1}, now=T0
            )
    with db.session(write=True) as s:
        done, pruned, failed = repo.trials(s, study)
        repo.end_trial(done, TrialState.COMPLETE, T0, value=0.9)
        repo.end_trial(pruned, TrialState.PRUNED, T0, value=0.1, pruned_step=2)
        repo.end_trial(failed, TrialState.FAILED, T0, value=0.5)
        repo.end_trial(done, TrialState.FAILED, T0)  # already ended: no change
    with db.session() as s:
        rows = repo.trials(s, study)
        assert [(r.state, r.value, r.pruned_step) for r in rows] == [
            ("complete", 0.9, None),
            ("pruned", 0.1, 2),  # the value it was stopped at
            ("failed", None, None),
        ]
        records = [repo.record(r, {1: 0.5}) for r in rows]
        assert records[0].state is TrialState.COMPLETE and records[0].value == 0.9
        assert records[1].intermediate == {1: 0.5} and records[1].system_attrs == {"g": 1}
        assert records[1].value is None  # never a score for the study's decisions


def test_a_study_ends_once(db: Database) -> None:
    study = new_study(db)
    with db.session(write=True) as s:
        row = repo.get(s, 1, study, lock=True)
        repo.end(s, row, "cancelled", "cancelled by tok_1", T0)
        repo.end(s, row, "succeeded", "all trials ended", T0)
    with db.session() as s:
        row = repo.get(s, 1, study)
        assert (row.state, row.reason) == ("cancelled", "cancelled by tok_1")
        assert study not in {r.id for r in repo.running(s)}
        assert s.get(StudyTrialRow, (study, 0)) is None
