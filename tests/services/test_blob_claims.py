"""Claims on a content-addressed key while a direct upload's object is checked
(services/blobs.py): exclusive of every other reference, a pin waits for them, a bad object
goes with its claim and nobody else's blob, a crashed check's claim and object go with the
sweep, or at once with the next upload that needs the key when its holder provably died."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from nimbus.db import blobrefs
from nimbus.db.blobrefs import ClaimHolder
from nimbus.db.control_planes import ControlPlane
from nimbus.db.engine import Database
from nimbus.db.tables import BlobRefRow
from nimbus.errors import Conflict
from nimbus.jobs.capacity import Capacity
from nimbus.services import blobs as blobkeeping
from nimbus.services.cluster import ClusterService, Identity, provably_dead
from nimbus.services.garbage import GarbageService
from nimbus.storage.blobs import BlobStore, key_for
from nimbus.storage.memory import MemoryObjectStore


def unchecked_object(
    memory: MemoryObjectStore, tmp_path: Path, data: bytes, claimed_hash: bytes
) -> str:
    """What a direct upload completed at its key leaves before the check: ``data`` stored
    under the key of ``claimed_hash``'s content (a lying client: not the same bytes)."""
    key = key_for(hashlib.sha256(claimed_hash).hexdigest())
    source = tmp_path / "object"
    source.write_bytes(data)
    memory.put_file(key, source)
    return key


def refs(db: Database, key: str) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(BlobRefRow.owner_kind).where(BlobRefRow.blob_key == key)))


def test_a_claim_is_granted_only_on_a_key_nothing_refers_to(db: Database) -> None:
    key = key_for("a" * 64)
    first = blobkeeping.claim(db, key)
    assert first is not None
    assert blobkeeping.claim(db, key) is None  # another claim
    pinned = key_for("b" * 64)
    blobkeeping.pin(db, [pinned])
    assert blobkeeping.claim(db, pinned) is None  # a pin (an upload storing it, a record)
    assert blobkeeping.is_referenced(db, key) and not blobkeeping.is_referenced(db, "x")


def test_a_pin_waits_for_the_check_and_a_bad_object_goes_with_its_claim(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, tmp_path: Path
) -> None:
    key = unchecked_object(memory, tmp_path, b"forged bytes", b"the real content")
    claim_id = blobkeeping.claim(db, key)
    assert claim_id is not None
    pinned: list[float] = []

    def honest_upload() -> None:
        blobkeeping.pin(db, [key])  # waits: the object at the key is unchecked
        pinned.append(time.monotonic())

    waiter = threading.Thread(target=honest_upload)
    waiter.start()
    time.sleep(0.5)
    assert not pinned  # still waiting while the claim holds
    dropped = time.monotonic()
    blobkeeping.drop_claim(db, blobs, claim_id)  # the check failed
    waiter.join(10)
    assert pinned and pinned[0] >= dropped
    assert not memory.exists(key)  # the forged object went; the honest upload writes its own
    assert refs(db, key) == [blobrefs.UPLOAD_PIN]


def test_a_good_object_keeps_its_key_under_a_pin(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, tmp_path: Path
) -> None:
    key = unchecked_object(memory, tmp_path, b"real", b"real")
    claim_id = blobkeeping.claim(db, key)
    assert claim_id is not None
    pin_id = blobkeeping.confirm_claim(db, claim_id)
    assert refs(db, key) == [blobrefs.UPLOAD_PIN]
    blobkeeping.pin(db, [key])  # no wait now
    blobkeeping.discard(db, blobs, [key], pin_id)
    assert memory.exists(key)  # the other pin still holds it
    with pytest.raises(Conflict, match="grace period"):
        blobkeeping.confirm_claim(db, claim_id)  # a claim once confirmed is no more


def test_a_pin_gives_up_on_a_claim_that_outlasts_its_wait(db: Database) -> None:
    key = key_for("c" * 64)
    assert blobkeeping.claim(db, key) is not None
    started = time.monotonic()
    with pytest.raises(Conflict, match="still being checked"):
        blobkeeping.pin(db, [key, key_for("d" * 64)], wait=0.3)
    assert time.monotonic() - started < 5
    assert refs(db, key_for("d" * 64)) == []  # nothing pinned at all


def test_the_sweep_drops_a_crashed_checks_claim_and_deletes_its_object_at_once(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, tmp_path: Path
) -> None:
    grace = 60.0
    now = [datetime.now(UTC)]
    garbage = GarbageService(db, blobs, grace_seconds=grace, clock=lambda: now[0])
    key = unchecked_object(memory, tmp_path, b"never checked", b"something")
    claim_id = blobkeeping.claim(db, key)
    assert claim_id is not None
    assert garbage.sweep().pins_dropped == 0 and memory.exists(key)  # within the grace
    now[0] += timedelta(seconds=grace + 1)
    report = garbage.sweep()
    assert report.pins_dropped == 1
    assert not memory.exists(key)  # unchecked: not even one grace period as an orphan
    assert refs(db, key) == []
    with pytest.raises(Conflict, match="grace period"):
        blobkeeping.confirm_claim(db, claim_id)  # the check that outlived it fails


# -- claims of a dead control plane ---------------------------------------------------------

HERE = socket.gethostname()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def plane(pid: int, heartbeat: datetime) -> ControlPlane:
    return ControlPlane(
        id="cp-1",
        url="http://127.0.0.1:1",
        hostname=HERE,
        pid=pid,
        executor="local",
        capacity={},
        jobs_dir="/tmp",
        started_at=NOW - timedelta(hours=1),
        heartbeat_at=heartbeat,
    )


@pytest.mark.parametrize(
    ("holder_host", "process", "registry", "dead"),
    [
        (HERE, False, None, True),  # gone, and gone from the registry
        (HERE, False, plane(41, NOW - timedelta(seconds=60)), True),  # silent for a lease
        (HERE, False, plane(99, NOW), True),  # its plane restarted: another pid heartbeats
        (HERE, True, None, False),  # a process has that pid: perhaps it
        (HERE, False, plane(41, NOW - timedelta(seconds=2)), False),  # heartbeats (a pid ns)
        ("elsewhere", False, None, False),  # another machine: no pid can prove anything
    ],
)
def test_a_holder_is_provably_dead_only_on_this_machine_gone_and_silent(
    holder_host: str, process: bool, registry: ControlPlane | None, dead: bool
) -> None:
    holder = ClaimHolder("cp-1", holder_host, 41)
    verdict = provably_dead(holder, registry, HERE, NOW, 5.0, lambda pid: process)
    assert verdict is dead


def dead_pid() -> int:
    """The pid of a process that ran here and exited: a real dead process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def claims_of(db: Database, blobs: BlobStore) -> blobkeeping.Claims:
    cluster = ClusterService(
        db,
        Identity("cp-me", "http://127.0.0.1:2", "local", Capacity(1, 0, 2**30), "/tmp"),
        lease_seconds=5.0,
    )
    cluster.register()
    return blobkeeping.Claims(db, blobs, cluster.holder(), cluster.holder_dead)


def test_a_dead_holders_claim_is_dropped_by_the_next_upload_with_its_object(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, tmp_path: Path
) -> None:
    claims = claims_of(db, blobs)
    key = unchecked_object(memory, tmp_path, b"never checked", b"content")
    crashed = ClaimHolder("cp-crashed", HERE, dead_pid())
    assert blobkeeping.claim(db, key, crashed) is not None
    started = time.monotonic()
    pin_id = blobkeeping.pin(db, [key], claims=claims, wait=10)  # no waiting for the grace
    assert time.monotonic() - started < 5
    assert not memory.exists(key)  # unchecked: deleted, the upload stores its own bytes
    assert refs(db, key) == [blobrefs.UPLOAD_PIN]
    blobkeeping.discard(db, blobs, [key], pin_id)

    # A direct upload that needs the key takes it at once too.
    key = unchecked_object(memory, tmp_path, b"also unchecked", b"other")
    assert blobkeeping.claim(db, key, crashed) is not None
    claim_id = claims.take(key)
    assert claim_id is not None and not memory.exists(key)
    with db.session() as s:
        assert blobrefs.claims_on(s, [key]) == {claim_id: claims.holder}


def test_a_live_or_unknown_holders_claim_still_holds_its_key(
    db: Database, blobs: BlobStore, memory: MemoryObjectStore, tmp_path: Path
) -> None:
    claims = claims_of(db, blobs)
    for holder in (
        ClaimHolder("cp-other", HERE, os.getpid()),  # alive: this very process
        ClaimHolder("cp-remote", "another-machine", dead_pid()),  # not provable from here
        None,  # a claim from before holders were recorded
    ):
        key = unchecked_object(memory, tmp_path, b"being checked", repr(holder).encode())
        assert blobkeeping.claim(db, key, holder) is not None
        with pytest.raises(Conflict, match="still being checked"):
            blobkeeping.pin(db, [key], claims=claims, wait=0.3)
        assert claims.take(key) is None
        assert memory.exists(key)
        assert refs(db, key) == [blobrefs.VERIFY_CLAIM]
