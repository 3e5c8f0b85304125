"""Blob references: which record holds which blob.

A blob may be deleted only when no reference to it remains. Every transaction that adds or
removes references, or deletes blobs, first calls :func:`lock`: on PostgreSQL a
transaction-scoped advisory lock, on SQLite the write lock that
``Database.session(write=True)`` already holds. Unreferenced blobs are deleted while that
lock is held, and an operation that stores blobs pins their keys (``UPLOAD_PIN``
references) *before* storing them, so "blob deleted" can never slip in between "blob
stored" and "reference recorded". A pin older than the grace period is taken for one left
by a crash and dropped by the garbage sweeper (:mod:`nimbus.services.garbage`); the
transaction that swaps a pin for a record's references checks, with :func:`unpin`, that the
pin still holds every key, so a record never refers to a blob the sweeper may have taken.

A *claim* (``VERIFY_CLAIM``) is the exclusive hold of a key whose object a client wrote
straight into the bucket and the control plane has not checked yet (a direct upload
completed at its content-addressed key): it is granted only while nothing else refers to
the key, and while it lasts no pin is granted on that key (:func:`claimed`), so nobody
stores, keeps or records an object there that may hold a lying client's bytes. A claim
becomes an upload pin once the object is verified (:func:`confirm_claim`), or goes with the
object when it is not.

``blob_orphans`` holds the sweeper's memory: when each unreferenced blob was first seen.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from nimbus.db.tables import BlobOrphanRow, BlobRefRow, utcnow
from nimbus.errors import Conflict

DATASET_VERSION = "dataset_version"
UPLOAD_PIN = "upload"  # held by an upload in progress, until its version row exists
VERIFY_CLAIM = "verify"  # a direct upload's unchecked object (see the module)
_PG_LOCK_ID = 0x4E424C42  # "NBLB"


def lock(session: Session) -> None:
    """Serialise reference changes with blob deletion until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})


def add(session: Session, owner_kind: str, owner_id: int, keys: Iterable[str]) -> None:
    """Record that the owner holds each of ``keys`` (duplicates are stored once)."""
    now = utcnow()
    session.add_all(
        BlobRefRow(blob_key=key, owner_kind=owner_kind, owner_id=owner_id, created_at=now)
        for key in sorted(set(keys))
    )
    session.flush()


def keys_of(session: Session, owner_kind: str, owner_id: int) -> list[str]:
    query = select(BlobRefRow.blob_key).where(
        BlobRefRow.owner_kind == owner_kind, BlobRefRow.owner_id == owner_id
    )
    return sorted(set(session.scalars(query)))


def unreferenced(session: Session, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` that nothing refers to."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    query = (
        select(BlobRefRow.blob_key, func.count())
        .where(BlobRefRow.blob_key.in_(wanted))
        .group_by(BlobRefRow.blob_key)
    )
    held = {key for key, count in session.execute(query) if count > 0}
    return [key for key in wanted if key not in held]


def release(session: Session, owner_kind: str, owner_id: int) -> list[str]:
    """Drop the owner's references; return its keys that no longer have any."""
    keys = keys_of(session, owner_kind, owner_id)
    session.execute(
        delete(BlobRefRow).where(
            BlobRefRow.owner_kind == owner_kind, BlobRefRow.owner_id == owner_id
        )
    )
    session.flush()
    return unreferenced(session, keys)


def unpin(session: Session, pin_id: int, keys: Iterable[str]) -> None:
    """Drop the upload pin ``pin_id``, in the transaction that records references to
    ``keys``; refuses (Conflict: the transaction rolls back) when the pin no longer holds
    one of them: the sweeper took it for a crashed upload's, and the blob may be gone."""
    lost = sorted(set(keys) - set(keys_of(session, UPLOAD_PIN, pin_id)))
    release(session, UPLOAD_PIN, pin_id)
    if lost:
        raise Conflict(
            f"the upload held its {len(lost)} blob(s) longer than the blob grace period "
            "(NIMBUS_BLOB_GRACE_SECONDS), so they were released as a crashed upload's; "
            "try again"
        )


@dataclass(frozen=True)
class ClaimHolder:
    """The control plane that took a claim: its id, machine and process."""

    plane_id: str
    hostname: str
    pid: int


def claim(session: Session, claim_id: int, key: str, holder: ClaimHolder | None = None) -> bool:
    """Claim ``key`` for checking a direct upload's object, recording its ``holder``; False
    (nothing added) when anything refers to it (a record, a pin, another claim)."""
    if not unreferenced(session, [key]):
        return False
    session.add(
        BlobRefRow(
            blob_key=key,
            owner_kind=VERIFY_CLAIM,
            owner_id=claim_id,
            created_at=utcnow(),
            holder_plane=holder.plane_id if holder is not None else None,
            holder_host=holder.hostname if holder is not None else None,
            holder_pid=holder.pid if holder is not None else None,
        )
    )
    session.flush()
    return True


def claims_on(session: Session, keys: Iterable[str]) -> dict[int, ClaimHolder | None]:
    """The claims on ``keys``, by claim id, with their holders (None: not recorded)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = session.execute(
        select(
            BlobRefRow.owner_id,
            BlobRefRow.holder_plane,
            BlobRefRow.holder_host,
            BlobRefRow.holder_pid,
        ).where(BlobRefRow.owner_kind == VERIFY_CLAIM, BlobRefRow.blob_key.in_(wanted))
    )
    return {
        claim_id: ClaimHolder(plane, host, pid)
        if plane is not None and host is not None and pid is not None
        else None
        for claim_id, plane, host, pid in rows
    }


def claimed(session: Session, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` under a claim (their object is unchecked: no pin on them now)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    query = select(BlobRefRow.blob_key).where(
        BlobRefRow.owner_kind == VERIFY_CLAIM, BlobRefRow.blob_key.in_(wanted)
    )
    return sorted(set(session.scalars(query)))


def confirm_claim(session: Session, claim_id: int, pin_id: int) -> list[str]:
    """Turn claim ``claim_id`` into upload pin ``pin_id`` (its object proved good); refuses
    (Conflict) when the claim is gone: the sweeper took it for a crashed upload's and
    deleted the object."""
    keys = keys_of(session, VERIFY_CLAIM, claim_id)
    if not keys:
        raise Conflict(
            "the upload was checked for longer than the blob grace period "
            "(NIMBUS_BLOB_GRACE_SECONDS), so its object was removed as a crashed upload's; "
            "upload it again"
        )
    release(session, VERIFY_CLAIM, claim_id)
    add(session, UPLOAD_PIN, pin_id, keys)
    return keys


# -- for the garbage sweeper ---------------------------------------------------------------


def pin_ages(session: Session, kind: str = UPLOAD_PIN) -> dict[int, datetime | None]:
    """Every upload pin (or claim: ``kind``) and when its oldest reference was added
    (None: unknown)."""
    query = (
        select(BlobRefRow.owner_id, func.min(BlobRefRow.created_at), func.count())
        .where(BlobRefRow.owner_kind == kind)
        .group_by(BlobRefRow.owner_id)
    )
    ages: dict[int, datetime | None] = {}
    for owner_id, oldest, _count in session.execute(query):
        ages[owner_id] = _utc(oldest)
    for owner_id in session.scalars(  # a pin with a row of unknown age counts as unknown
        select(BlobRefRow.owner_id)
        .where(BlobRefRow.owner_kind == kind, BlobRefRow.created_at.is_(None))
        .distinct()
    ):
        ages[owner_id] = None
    return ages


def drop_pins(session: Session, pin_ids: Collection[int], kind: str = UPLOAD_PIN) -> int:
    """Delete the upload pins (or claims: ``kind``) ``pin_ids``; returns how many
    references went."""
    if not pin_ids:
        return 0
    result = session.execute(
        delete(BlobRefRow).where(
            BlobRefRow.owner_kind == kind, BlobRefRow.owner_id.in_(sorted(pin_ids))
        )
    )
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def referenced(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` that something (a record or a pin) refers to."""
    wanted = set(keys)
    return wanted - set(unreferenced(session, wanted))


def orphans_seen(session: Session, keys: Iterable[str] | None = None) -> dict[str, datetime]:
    """When the sweeper first saw each of ``keys`` (all, when None) unreferenced."""
    query = select(BlobOrphanRow.blob_key, BlobOrphanRow.first_seen_at)
    if keys is not None:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        query = query.where(BlobOrphanRow.blob_key.in_(wanted))
    return {key: _utc_required(seen) for key, seen in session.execute(query)}


def mark_orphans(session: Session, keys: Iterable[str], seen_at: datetime) -> None:
    session.add_all(BlobOrphanRow(blob_key=key, first_seen_at=seen_at) for key in sorted(set(keys)))
    session.flush()


def forget_orphans(session: Session, keys: Iterable[str]) -> None:
    wanted = sorted(set(keys))
    if wanted:
        session.execute(delete(BlobOrphanRow).where(BlobOrphanRow.blob_key.in_(wanted)))
        session.flush()


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc_required(value)


def _utc_required(value: datetime) -> datetime:
    # SQLite hands back naive (UTC) values where a query bypasses the column's type.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
