"""The console's jobs list in SQL: filters, sorts by a metric's best or last value, paging,
tenants apart, on both backends; the plan uses indexes; migration 0016 fills the columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text, update

from nimbus.db import job_details
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import JobMetricRow, JobRow, StudyRow, StudyTrialRow, Tenant
from nimbus.jobs.domain import JobSpec
from nimbus.services.jobs import job_filter

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _jobs(db: Database) -> list[str]:
    """Five jobs of acme (a-e, oldest first) and one of globex; metrics for a, b, c."""
    specs = [
        ("text", "reviews:1"),
        ("text", "reviews:2"),
        ("cnn", "photos:1"),
        ("mlp", "census:3"),
        ("text", "reviews:2"),
    ]
    with db.session(write=True) as s:
        ids = [
            repo.submit(s, 1, JobSpec(model=m, dataset=d), T0 + timedelta(seconds=i)).id
            for i, (m, d) in enumerate(specs)
        ]
        other = repo.submit(s, 2, JobSpec(model="text", dataset="reviews:1"), T0).id
        s.execute(update(JobRow).where(JobRow.id == ids[1]).values(state="failed"))
        series = {
            ids[0]: [(1, 1, 0.5), (1, 2, 0.7)],  # best 0.7, last 0.7
            ids[1]: [(1, 1, 0.9), (1, 2, 0.6)],  # best 0.9, last 0.6
            ids[2]: [(1, 1, 0.2), (2, 1, 0.8), (2, 2, 0.75)],  # retried: last 0.75
            other: [(1, 1, 0.99)],
        }
        s.execute(
            insert(JobMetricRow),
            [
                {
                    "job_id": j,
                    "attempt_number": a,
                    "step": st,
                    "name": "val_accuracy",
                    "value": v,
                    "created_at": T0,
                }
                for j, points in series.items()
                for a, st, v in points
            ],
        )
        s.add(StudyRow(id="st1", tenant_id=1, state="running", search={}, job={}, created_at=T0))
        s.flush()
        s.add(
            StudyTrialRow(
                study_id="st1",
                number=3,
                job_id=ids[4],
                params={},
                state="running",
                system_attrs={},
                created_at=T0,
            )
        )
    return ids


def _ids(db: Database, tenant: int = 1, **query: object) -> list[str]:
    with db.session() as s:
        return [j.id for j in job_details.list_sorted(s, tenant, job_filter(**query))]  # type: ignore[arg-type]


def test_filters_sorts_and_pages(db: Database) -> None:
    a, b, c, d, e = _jobs(db)
    assert _ids(db) == [e, d, c, b, a]  # newest first, acme's only
    assert _ids(db, order="asc") == [a, b, c, d, e]
    assert _ids(db, state="failed") == [b]
    assert _ids(db, model="text") == [e, b, a]
    assert _ids(db, dataset="reviews") == [e, b, a]
    assert _ids(db, dataset="reviews:2") == [e, b]
    assert _ids(db, study="st1") == [e]
    assert _ids(db, sort="state") == [b, e, d, c, a]  # failed before queued
    # A metric's best (highest accuracy) first; jobs without it last, newest first.
    assert _ids(db, metric="best:val_accuracy", sort="metric") == [b, c, a, e, d]
    assert _ids(db, metric="last:val_accuracy", sort="metric") == [c, a, b, e, d]
    assert _ids(db, metric="last:val_accuracy", sort="metric", order="asc") == [b, a, c, e, d]
    assert _ids(db, per_page=2) == [e, d]
    assert _ids(db, per_page=2, page=3) == [a]
    with db.session() as s:
        listed = job_details.list_sorted(s, 1, job_filter(metric="best:val_accuracy", study="st1"))
        assert [(j.study, j.trial, j.dataset, j.dataset_version) for j in listed] == [
            ("st1", 3, "reviews", 2)
        ]
        rows = job_details.list_sorted(s, 1, job_filter(metric="best:val_accuracy", sort="metric"))
        assert [r.metric for r in rows[:3]] == [0.9, 0.8, 0.7]
        assert job_details.count(s, 1, job_filter(model="text")) == 3
        assert job_details.count(s, 2, job_filter()) == 1
        assert job_details.metric_names(s, 1) == ["val_accuracy"]
        assert job_details.metric_names(s, 2) == ["val_accuracy"]
    assert _ids(db, tenant=2, model="cnn") == []
    with db.session(write=True) as s:  # a reference without a version is kept as it is
        plain = repo.submit(s, 1, JobSpec(model="text", dataset="plain"), T0).id
        row = s.get(JobRow, plain)
        assert row is not None and (row.dataset_name, row.dataset_version) == ("plain", None)


def test_the_page_query_uses_indexes(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    upgrade(db.engine)
    with db.session(write=True) as s:
        s.add(Tenant(id=1, name="acme"))
    cases = {
        "": "ix_jobs_tenant_created",
        "state=failed": "ix_jobs_tenant_state",
        "model=cnn": "ix_jobs_tenant_model",
        "dataset=photos:2": "ix_jobs_tenant_dataset",
        "sort=state": "ix_jobs_tenant_state",
        "metric=last:loss&sort=metric": "ix_job_metrics_job_name",
        "metric=best:val_accuracy&sort=metric": "ix_job_metrics_job_name",
    }
    try:
        with db.session() as s:
            for case, index in cases.items():
                query = dict(p.split("=") for p in case.split("&") if p)
                statement = job_details.list_query(1, job_filter(**query))  # type: ignore[arg-type]
                sql = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
                plan = " | ".join(r[3] for r in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
                assert index in plan, (case, plan)
                assert "SCAN jobs" not in plan and "SCAN job_metrics" not in plan, (case, plan)
    finally:
        db.dispose()


def test_migration_0016_fills_model_and_dataset(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(db.engine, "0015")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, created_at) "
                    "VALUES (1, 'acme', '2030-01-01 00:00:00')"
                )
            )
            for job_id, spec in (
                ("j1", '{"model": "cnn", "dataset": "photos:12"}'),
                ("j2", '{"model": "code:sha256/ab", "dataset": null}'),
            ):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, tenant_id, spec, state, priority, cpus, gpus, "
                        "memory_bytes, workers, attempts, max_retries, cancel_requested, "
                        "log_seq, created_at) VALUES (:id, 1, :spec, 'succeeded', 0, 1, 0, 1, "
                        "1, 1, 0, 0, 0, '2030-01-01 00:00:00')"
                    ),
                    {"id": job_id, "spec": spec},
                )
        upgrade(db.engine)
        with db.session() as s:
            rows = s.execute(
                text("SELECT id, model, dataset_name, dataset_version FROM jobs ORDER BY id")
            ).all()
        assert [tuple(r) for r in rows] == [
            ("j1", "cnn", "photos", 12),
            ("j2", "code:sha256/ab", None, None),
        ]
        assert [j.id for j in _ids_in(db, model="cnn")] == ["j1"]
    finally:
        db.dispose()


def _ids_in(db: Database, **query: str) -> list[job_details.ListedJob]:
    with db.session() as s:
        return job_details.list_sorted(s, 1, job_filter(**query))  # type: ignore[arg-type]
