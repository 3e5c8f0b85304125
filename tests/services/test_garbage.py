"""The blob garbage sweeper: its pure decisions, then sweeps over a real metadata store."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nimbus.db import blobrefs
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import BlobOrphanRow, BlobRefRow, DatasetVersion
from nimbus.errors import Conflict, Forbidden
from nimbus.security import Principal, Role
from nimbus.services import blobs as blobkeeping
from nimbus.services.garbage import (
    BlobPlan,
    GarbageService,
    garbage_sweep,
    plan_blobs,
    stale_entries,
    stale_pins,
)
from nimbus.services.tokens import TokenService
from nimbus.storage.blobs import BlobStore, key_for
from nimbus.storage.memory import MemoryObjectStore
from nimbus.wire.storage import SweepReport
from tests.services.test_datasets import MakePrincipal, count_rows, service, upload

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GRACE = 3600.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- the decisions ------------------------------------------------------------------------


def test_stale_pins_are_those_older_than_the_cutoff_or_of_unknown_age() -> None:
    ages = {1: at(0), 2: at(100), 3: None, 4: at(50)}
    assert stale_pins(ages, at(50)) == [1, 3]
    assert stale_pins(ages, at(0)) == [3]
    assert stale_pins({}, at(0)) == []


def test_plan_keeps_referenced_blobs_and_forgets_them_as_orphans() -> None:
    plan = plan_blobs(["a", "b"], {"a", "b"}, {"b": at(0)}, now=at(10_000), cutoff=at(9_000))
    assert plan == BlobPlan(forget=["b"])


def test_plan_remembers_a_new_orphan_and_waits_out_the_grace_period() -> None:
    plan = plan_blobs(["x"], set(), {}, now=at(100), cutoff=at(100 - GRACE))
    assert plan == BlobPlan(mark=["x"], waiting=["x"])


def test_plan_deletes_an_orphan_first_seen_before_the_cutoff() -> None:
    seen = {"old": at(0), "young": at(50)}
    plan = plan_blobs(["old", "young", "held"], {"held"}, seen, now=at(100), cutoff=at(10))
    assert plan == BlobPlan(delete=["old"], waiting=["young"])


def test_plan_with_no_grace_deletes_a_new_orphan_at_once() -> None:
    plan = plan_blobs(["x", "y"], {"y"}, {}, now=at(5), cutoff=at(5))
    assert plan == BlobPlan(delete=["x"], mark=["x"])


def test_stale_entries_spare_fresh_files_busy_directories_and_the_kept_ones(
    tmp_path: Path,
) -> None:
    old = time.time() - 7200
    stale_file = tmp_path / "upload-1"
    stale_file.write_bytes(b"x")
    fresh_file = tmp_path / "upload-2"
    fresh_file.write_bytes(b"y")
    busy = tmp_path / "ingest-1"  # an old directory with a file written just now
    (busy / "deep").mkdir(parents=True)
    (busy / "deep" / "part").write_bytes(b"z")
    idle = tmp_path / "ingest-2"
    idle.mkdir()
    (idle / "part").write_bytes(b"w")
    kept = tmp_path / "staging"
    kept.mkdir()
    for path in (stale_file, busy, busy / "deep", idle / "part", idle, kept):
        os.utime(path, (old, old))
    found = set(stale_entries(tmp_path, time.time() - 3600, keep=[kept]))
    assert found == {stale_file, idle}
    assert list(stale_entries(tmp_path / "missing", time.time())) == []


# -- sweeps over a real metadata store -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def garbage_of(db: Database, blobs: BlobStore, clock: Clock, *dirs: Path) -> GarbageService:
    return GarbageService(
        db, blobs, grace_seconds=GRACE, staging_dirs=dirs, staging_grace_seconds=GRACE, clock=clock
    )


def crashed_upload(db: Database, blobs: BlobStore, data: bytes) -> str:
    """What an upload killed between storing its blob and recording it leaves: the pin and
    the blob (the real crash, a SIGKILLed server, is in tests/api/test_blob_garbage.py)."""
    key = key_for(hashlib.sha256(data).hexdigest())
    blobkeeping.pin(db, [key])
    assert blobs.put_bytes(data).key == key
    return key


def pins(db: Database) -> int:
    with db.session() as s:
        query = select(func.count()).where(BlobRefRow.owner_kind == blobrefs.UPLOAD_PIN)
        return int(s.scalar(query) or 0)


def test_a_crashed_uploads_pin_and_blob_go_after_the_grace_periods(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, clock: Clock
) -> None:
    garbage = garbage_of(db, blobs, clock)
    clock.now = datetime.now(UTC)  # the pin is dated by the real clock
    key = crashed_upload(db, blobs, b"half an upload")
    report = garbage.sweep()
    assert (report.pins_dropped, report.blobs_deleted, report.blobs_waiting) == (0, 0, 0)
    assert pins(db) == 1 and memory.exists(key)

    clock.advance(GRACE + 1)  # the upload is taken for crashed: its pin goes
    report = garbage.sweep()
    assert (report.pins_dropped, report.blobs_deleted, report.blobs_waiting) == (1, 0, 1)
    assert pins(db) == 0 and memory.exists(key)

    clock.advance(GRACE - 1)  # unreferenced, but not yet for the whole grace period
    assert garbage.sweep().blobs_waiting == 1
    assert memory.exists(key)

    clock.advance(2)
    report = garbage.sweep()
    assert (report.blobs_deleted, report.blobs_waiting, report.blobs_listed) == (1, 0, 1)
    assert not memory.exists(key)
    assert count_rows(db, BlobOrphanRow) == 0


def test_referenced_blobs_survive_any_sweep_and_deleted_versions_leave_nothing(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    clock: Clock,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    v1 = upload(svc, who, tmp_path, b"one").version
    v2 = upload(svc, who, tmp_path, b"two").version
    garbage = garbage_of(db, blobs, clock)
    report = garbage.sweep(grace_seconds=0)
    assert (report.blobs_listed, report.blobs_deleted, report.pins_dropped) == (5, 0, 0)
    for version in (v1, v2):
        for entry in version.files.values():
            blobs.verify(entry.key)
    svc.delete_version(who, "reviews", 1)
    assert garbage.sweep(grace_seconds=0).blobs_deleted == 0  # the service deleted them
    assert sorted(memory.keys()) == sorted({e.key for e in v2.files.values()})


def test_a_remembered_orphan_pinned_again_by_an_upload_is_kept(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, clock: Clock
) -> None:
    garbage = garbage_of(db, blobs, clock)
    key = blobs.put_bytes(b"leaked long ago").key
    assert garbage.sweep().blobs_waiting == 1  # remembered as unreferenced
    clock.advance(GRACE + 1)
    blobkeeping.pin(db, [key])  # an identical upload begins: it will reuse the blob
    report = garbage.sweep(grace_seconds=10 * GRACE)  # the fresh pin is kept...
    assert (report.blobs_deleted, report.blobs_waiting) == (0, 0)
    assert memory.exists(key)
    assert count_rows(db, BlobOrphanRow) == 0  # ...and the blob's orphan age forgotten


def test_a_pin_dropped_meanwhile_fails_the_commit_and_leaves_nothing(
    db: Database,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    clock: Clock,
) -> None:
    """Another control plane sweeps with no grace while this upload stores its blobs: the
    upload's pin goes, so it must not record references to blobs that may be gone."""
    swept: list[int] = []
    first = threading.Lock()  # the upload stores its blobs from several threads at once

    class SweptWhileWriting(MemoryObjectStore):
        def put_file(self, key: str, source: Path) -> None:
            super().put_file(key, source)
            if first.acquire(blocking=False):
                swept.append(garbage_of(db, blobs, clock).sweep(grace_seconds=0).pins_dropped)

    blobs = BlobStore(SweptWhileWriting(), tmp_path / "staging")
    clock.now = datetime.now(UTC) + timedelta(seconds=1)
    with pytest.raises(Conflict, match="longer than the blob grace period"):
        upload(service(db, blobs, tmp_path), make_principal(), tmp_path, b"slow upload")
    assert swept == [1]
    assert count_rows(db, DatasetVersion) == 0
    assert count_rows(db, BlobRefRow) == 0
    assert list(blobs.objects.keys()) == []


def test_unpin_refuses_keys_the_pin_no_longer_holds(db: Database) -> None:
    pin_id = blobkeeping.pin(db, ["sha256/aa/" + "a" * 64])
    with db.session(write=True) as session:
        blobrefs.unpin(session, pin_id, ["sha256/aa/" + "a" * 64])
    assert pins(db) == 0
    pin_id = blobkeeping.pin(db, ["sha256/bb/" + "b" * 64])
    with pytest.raises(Conflict), db.session(write=True) as session:
        blobrefs.unpin(session, pin_id, ["sha256/bb/" + "b" * 64, "sha256/cc/" + "c" * 64])
    assert pins(db) == 1  # rolled back with the transaction


def test_stale_staging_files_go_and_the_staging_directories_stay(
    db: Database, blobs: BlobStore, tmp_path: Path, clock: Clock
) -> None:
    tmp = tmp_path / "tmp"
    staging = tmp / "staging"
    staging.mkdir(parents=True)
    old = time.time() - GRACE - 60
    left = [tmp / "upload-crashed", staging / "blob-crashed"]
    for path in left:
        path.write_bytes(b"left by a crash")
    live = staging / "blob-live"
    live.write_bytes(b"being written")
    for path in [*left, staging]:
        os.utime(path, (old, old))
    report = garbage_of(db, blobs, clock, tmp, staging).sweep()
    assert report.staging_removed == 2
    assert staging.is_dir() and live.exists()
    assert not any(path.exists() for path in left)
    received = tmp / "upload-being-ingested"  # an upload in flight, before any pin
    received.write_bytes(b"received an hour ago, still being ingested")
    os.utime(received, (time.time() - GRACE / 2,) * 2)
    assert garbage_of(db, blobs, clock, tmp, staging).sweep(grace_seconds=0).staging_removed == 0
    assert received.exists()  # a blob grace of 0 is not a staging grace of 0


def test_only_operators_sweep(
    db: Database, blobs: BlobStore, make_principal: Callable[..., Principal], clock: Clock
) -> None:
    garbage = garbage_of(db, blobs, clock)
    with pytest.raises(Forbidden):
        garbage.sweep_for(make_principal("acme", Role.ADMIN))
    with pytest.raises(Forbidden):
        garbage.sweep_for(make_principal("default", Role.MEMBER))
    assert garbage.sweep_for(make_principal("default", Role.ADMIN)).blobs_listed == 0


def test_the_background_sweep_runs_every_interval_and_survives_a_failure(
    db: Database, blobs: BlobStore, clock: Clock
) -> None:
    calls: list[float] = []
    done = threading.Event()

    class Flaky(GarbageService):
        def sweep(self, grace_seconds: float | None = None) -> SweepReport:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise OSError("the store is unreachable")
            if len(calls) == 3:
                done.set()
            return super().sweep(grace_seconds)

    sweep = garbage_sweep(Flaky(db, blobs, grace_seconds=GRACE, clock=clock), 0.05)
    sweep.start()
    try:
        assert done.wait(10)
    finally:
        sweep.stop()
    assert len(calls) >= 3


# -- two control planes on one PostgreSQL ----------------------------------------------


def test_two_sweepers_and_uploads_on_postgresql_never_lose_a_referenced_blob(
    pg_url: str, tmp_path: Path
) -> None:
    """Control planes A and B share a database and a store; A uploads while both sweep
    with no grace at all (the harshest setting): every version stays whole, and what a
    crashed upload left is gone."""
    memory = MemoryObjectStore()
    planes = [Database(pg_url), Database(pg_url)]
    upgrade(planes[0].engine)
    try:
        blobs = [BlobStore(memory, tmp_path / f"staging-{i}") for i in range(2)]
        tokens = TokenService(planes[0])
        operator = tokens.authenticate(tokens.ensure_bootstrap_admin() or "")
        who = tokens.authenticate(tokens.create(operator, "m", Role.MEMBER, "acme").token)
        leaked = crashed_upload(planes[1], blobs[1], b"left by a crash")
        stop = threading.Event()
        errors: list[BaseException] = []

        def sweeper(i: int) -> None:
            garbage = GarbageService(planes[i], blobs[i], grace_seconds=GRACE)
            try:
                while not stop.is_set():
                    garbage.sweep(grace_seconds=0)
                    stop.wait(0.005)  # a gap between sweeps, as the interval gives: no livelock
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sweeper, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        svc = service(planes[0], blobs[0], tmp_path)
        versions = []
        lost: list[int] = []
        try:
            for n in range(12):
                for _attempt in range(50):
                    try:
                        versions.append(upload(svc, who, tmp_path, f"d{n}".encode()).version)
                        break
                    except Conflict:  # a sweep with no grace took the pin: retry, as a user
                        lost.append(n)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert errors == []
        assert len(versions) == 12, lost
        for version in versions:
            for entry in version.files.values():
                blobs[0].verify(entry.key)
        assert not memory.exists(leaked)
        assert pins(planes[0]) == 0
        referenced = {e.key for v in versions for e in v.files.values()}
        assert set(memory.keys()) == referenced
    finally:
        for plane in planes:
            plane.dispose()


def test_tenant_scoped_blobs_are_swept_like_shared_ones(
    db: Database, memory: MemoryObjectStore, tmp_path: Path, clock: Clock
) -> None:
    """With encryption at rest, blobs live under ``tenants/<id>/sha256/...``: the sweeper
    lists them, keeps the referenced ones and deletes an orphan after the grace period."""
    scoped = BlobStore(memory, tmp_path / "staging", tenant_scoped=True)
    held = scoped.for_tenant(1).put_bytes(b"referenced").key
    orphan = scoped.for_tenant(2).put_bytes(b"leaked").key
    assert held.startswith("tenants/1/") and orphan.startswith("tenants/2/")
    with db.session(write=True) as session:
        blobrefs.add(session, blobrefs.DATASET_VERSION, 7, [held])
    garbage = garbage_of(db, scoped, clock)
    report = garbage.sweep()
    assert (report.blobs_listed, report.blobs_deleted, report.blobs_waiting) == (2, 0, 1)
    clock.advance(GRACE + 1)
    assert garbage.sweep().blobs_deleted == 1
    assert sorted(memory.keys()) == [held]
