"""Repositories (tenants, tokens, datasets, blob refs, audit) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from nimbus.db import audit, blobrefs, datasets, tenants, tokens
from nimbus.db.engine import Database
from nimbus.db.tables import DatasetVersion, JobRow, utcnow


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    yield database
    database.dispose()


def _tenant(db: Database, name: str = "acme") -> int:
    with db.session(write=True) as s:
        return tenants.get_or_create(s, name).id


def test_tenant_get_or_create_is_idempotent(db: Database) -> None:
    first = _tenant(db)
    assert _tenant(db) == first
    assert _tenant(db, "other") != first
    with db.session() as s:
        assert tenants.get_by_name(s, "acme") is not None
        assert tenants.get_by_name(s, "nobody") is None


def test_tokens_lookup_revoke_and_usable_admin(db: Database) -> None:
    tid = _tenant(db)
    now = utcnow()
    with db.session(write=True) as s:
        assert not tokens.has_usable_admin(s, tid, now)
        tokens.create(
            s,
            token_id="tok_a",
            tenant_id=tid,
            name="a",
            role="admin",
            token_hash="a" * 64,
            created_by=None,
        )
        tokens.create(
            s,
            token_id="tok_m",
            tenant_id=tid,
            name="m",
            role="member",
            token_hash="b" * 64,
            created_by="tok_a",
            expires_at=now + timedelta(hours=1),
        )
    with db.session(write=True) as s:
        found = tokens.find_by_hash(s, "a" * 64)
        assert found is not None and found[0].id == "tok_a" and found[1].name == "acme"
        assert tokens.find_by_hash(s, "c" * 64) is None
        assert [t.id for t in tokens.list_for_tenant(s, tid)] == ["tok_a", "tok_m"]
        assert tokens.has_usable_admin(s, tid, now)
        row = tokens.get(s, "tok_a")
        assert row is not None
        tokens.revoke(s, row, now)
        first = row.revoked_at
        tokens.revoke(s, row, now + timedelta(seconds=5))
        assert row.revoked_at == first
        assert not tokens.has_usable_admin(s, tid, now)


def test_expired_admin_is_not_usable(db: Database) -> None:
    tid = _tenant(db)
    now = utcnow()
    with db.session(write=True) as s:
        tokens.create(
            s,
            token_id="tok_x",
            tenant_id=tid,
            name="x",
            role="admin",
            token_hash="d" * 64,
            created_by=None,
            expires_at=now - timedelta(seconds=1),
        )
        assert not tokens.has_usable_admin(s, tid, now)


def _version(s: Session, dataset_id: int, number: int, content: str) -> DatasetVersion:
    return datasets.create_version(
        s,
        dataset_id=dataset_id,
        version=number,
        content_hash=content,
        source_hash=content,
        task="text-classification",
        format="text-csv",
        size_bytes=1,
        info={},
        files={},
        created_by=None,
    )


def test_dataset_versions_numbers_latest_and_dedupe_lookup(db: Database) -> None:
    tid = _tenant(db)
    with db.session(write=True) as s:
        ds = datasets.get_or_create_dataset(s, tid, "digits")
        assert datasets.get_or_create_dataset(s, tid, "digits").id == ds.id
        assert datasets.get_version(s, ds.id, None) is None
        for content in ("a" * 64, "b" * 64):
            _version(s, ds.id, datasets.allocate_version_number(s, ds), content)
    with db.session(write=True) as s:
        ds2 = datasets.get_dataset(s, tid, "digits")
        assert ds2 is not None
        latest = datasets.get_version(s, ds2.id, None)
        assert latest is not None and latest.version == 2
        found = datasets.find_by_content(s, ds2.id, "a" * 64)
        assert found is not None and found.version == 1
        assert datasets.find_by_content(s, ds2.id, "c" * 64) is None
        datasets.delete_version(s, latest)
        # A deleted number is never given out again.
        assert datasets.allocate_version_number(s, ds2) == 3
    with db.session() as s:
        [summary] = datasets.list_datasets(s, tid)
        assert (summary.name, summary.latest_version, summary.versions) == ("digits", 1, 1)


def test_datasets_are_per_tenant(db: Database) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    with db.session(write=True) as s:
        datasets.get_or_create_dataset(s, a, "shared-name")
        datasets.get_or_create_dataset(s, b, "empty")
    with db.session(write=True) as s:
        assert datasets.get_dataset(s, b, "shared-name") is None
        assert [d.name for d in datasets.list_datasets(s, a)] == ["shared-name"]
        [empty] = datasets.list_datasets(s, b)
        assert (empty.latest_version, empty.versions) == (None, 0)
        ds = datasets.get_dataset(s, a, "shared-name")
        assert ds is not None
        _version(s, ds.id, 1, "e" * 64)
        datasets.delete_dataset(s, ds)
        assert datasets.list_datasets(s, a) == []


def test_blob_refs_release_returns_only_unreferenced_keys(db: Database) -> None:
    with db.session(write=True) as s:
        blobrefs.lock(s)
        blobrefs.add(s, "dataset_version", 1, ["k1", "k2", "k2"])
        blobrefs.add(s, "dataset_version", 2, ["k2", "k3"])
        assert blobrefs.keys_of(s, "dataset_version", 1) == ["k1", "k2"]
    with db.session(write=True) as s:
        blobrefs.lock(s)
        assert blobrefs.unreferenced(s, ["k1", "k4"]) == ["k4"]
        assert blobrefs.release(s, "dataset_version", 1) == ["k1"]
        assert blobrefs.release(s, "dataset_version", 1) == []
        assert blobrefs.release(s, "dataset_version", 2) == ["k2", "k3"]
        assert blobrefs.unreferenced(s, []) == []


def test_audit_events_newest_first_per_tenant(db: Database) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    with db.session(write=True) as s:
        for i, tenant in enumerate((a, b, a, None)):
            audit.record(
                s,
                tenant_id=tenant,
                token_id="tok",
                actor="x",
                action="POST",
                resource=f"/r/{i}" + "x" * 600,
                status=201,
                detail={"i": i},
            )
    with db.session() as s:
        events = audit.list_events(s, a, 10)
        assert [e.detail for e in events] == [{"i": 2}, {"i": 0}]
        assert len(events[0].resource) == 512
        assert len(audit.list_events(s, a, 1)) == 1
        with_none = audit.list_events(s, a, 10, include_unattributed=True)
        assert [e.detail for e in with_none] == [{"i": 3}, {"i": 2}, {"i": 0}]


def _job(tenant_id: int, job_id: str, dataset: str, version: int, minute: int) -> JobRow:
    return JobRow(
        id=job_id,
        tenant_id=tenant_id,
        spec={"model": "text", "dataset": dataset},
        state="queued",
        priority=0,
        cpus=1.0,
        gpus=0,
        memory_bytes=1,
        workers=1,
        attempts=0,
        max_retries=0,
        cancel_requested=False,
        log_seq=0,
        created_at=utcnow().replace(minute=minute),
        inputs={"dataset": {"dataset": dataset, "version": version}, "code": None},
    )


def test_dataset_overview_and_the_jobs_that_read_a_version(db: Database) -> None:
    tid, other = _tenant(db), _tenant(db, "other")
    with db.session(write=True) as s:
        digits = datasets.get_or_create_dataset(s, tid, "digits")
        for number, content in ((1, "a" * 64), (2, "b" * 64)):
            _version(s, digits.id, number, content)
        datasets.get_or_create_dataset(s, tid, "empty")
        theirs = datasets.get_or_create_dataset(s, other, "digits")
        _version(s, theirs.id, 1, "c" * 64)
        s.add_all(
            [
                _job(tid, "j-old", "digits", 1, 1),
                _job(tid, "j-new", "digits", 1, 2),
                _job(tid, "j-v2", "digits", 2, 3),
                _job(tid, "j-name", "digits2", 1, 4),
                _job(other, "j-theirs", "digits", 1, 5),
            ]
        )
    with db.session() as s:
        listed = datasets.list_overview(s, tid)
        assert [(d.name, d.versions, d.latest_version, d.format) for d in listed] == [
            ("digits", 2, 2, "text-csv"),
            ("empty", 0, None, None),
        ]
        used = datasets.jobs_using(s, tid, "digits", 1, limit=10)
        assert [(j.id, j.model, j.state) for j in used] == [
            ("j-new", "text", "queued"),
            ("j-old", "text", "queued"),
        ]
        assert [j.id for j in datasets.jobs_using(s, tid, "digits", 1, limit=1)] == ["j-new"]
        assert [j.id for j in datasets.jobs_using(s, other, "digits", 1, 10)] == ["j-theirs"]
