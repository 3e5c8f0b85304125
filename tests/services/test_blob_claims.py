"""Claims on a content-addressed key while a direct upload's object is checked
(services/blobs.py): exclusive of every other reference, a pin waits for them, a bad object
goes with its claim and nobody else's blob, and a crashed check's claim and object go with
the sweep."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from nimbus.db import blobrefs
from nimbus.db.engine import Database
from nimbus.db.tables import BlobRefRow
from nimbus.errors import Conflict
from nimbus.services import blobs as blobkeeping
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
