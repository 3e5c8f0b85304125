"""The blob garbage sweeper: blobs nothing refers to, pins and staging files left by crashes.

A service deletes a record's blobs as soon as their last reference goes; what escapes it is
what a crash (or a failed delete) leaves: an upload's pin that nothing will release, the
blobs stored under it, a staging file half written. Every ``interval`` seconds, and on an
operator's demand, one sweep:

1. drops upload pins older than the grace period (their upload is taken for crashed: a
   live upload whose pin was dropped fails at commit, see :func:`nimbus.db.blobrefs.unpin`);
2. lists the object store (the truth of what exists) and, for each blob nothing refers
   to, remembers when it was first seen so (``blob_orphans``); a blob still unreferenced
   one grace period after that is deleted, while the reference lock is held, so a blob is
   never deleted between being stored (always under a pin) and being referenced;
3. removes files and work directories in the staging directories untouched for the
   staging grace period (its own setting: an upload in flight has its files there while
   it is received and ingested, so even a sweep with no blob grace leaves them).

"Unreferenced for longer than the grace period" is measured by the metadata store's own
record rather than by the objects' last-modified times: it needs nothing of a backend but
its listing, it counts from when the blob lost its last reference (a blob stored long ago
and released just now is young), and it compares times of the control planes' clocks only,
not a storage server's. Several control planes sharing one database sweep safely: every
decision and deletion happens under :func:`nimbus.db.blobrefs.lock`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from nimbus.db import blobrefs
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.errors import Forbidden, NotFound
from nimbus.security import Principal, Role, require_role
from nimbus.storage.blobs import TENANTS, BlobStore, digest_of
from nimbus.ticker import Ticker
from nimbus.wire.storage import SweepReport

log = logging.getLogger(__name__)
BATCH = 500  # blobs decided per transaction: the reference lock is held for one batch


# -- the decisions (pure) ------------------------------------------------------------------


def stale_pins(ages: Mapping[int, datetime | None], cutoff: datetime) -> list[int]:
    """Pins whose oldest reference was added before ``cutoff`` (or at an unknown time:
    only code older than the ``created_at`` column wrote those)."""
    return sorted(pin for pin, added in ages.items() if added is None or added < cutoff)


@dataclass(frozen=True)
class BlobPlan:
    """What one batch of listed blobs calls for."""

    delete: list[str] = field(default_factory=list)  # unreferenced for the grace period
    mark: list[str] = field(default_factory=list)  # unreferenced, first seen now
    forget: list[str] = field(default_factory=list)  # remembered as orphans, referenced again
    waiting: list[str] = field(default_factory=list)  # unreferenced, within the grace period


def plan_blobs(
    listed: Iterable[str],
    referenced: Collection[str],
    first_seen: Mapping[str, datetime],
    now: datetime,
    cutoff: datetime,
) -> BlobPlan:
    """Decide each listed blob: kept (referenced), remembered, or deleted. A blob first seen
    unreferenced now is deleted at once only when ``cutoff`` is ``now`` (a grace of zero)."""
    plan = BlobPlan()
    for key in sorted(set(listed)):
        if key in referenced:
            if key in first_seen:
                plan.forget.append(key)
            continue
        seen = first_seen.get(key)
        if seen is None:
            plan.mark.append(key)
            seen = now
        (plan.delete if seen <= cutoff else plan.waiting).append(key)
    return plan


# Shared blobs, and (with encryption at rest) each tenant's own: ``tenants/<id>/sha256/...``.
BLOB_PREFIXES = ("sha256/", TENANTS)


def is_blob_key(key: str) -> bool:
    try:
        digest_of(key)
    except NotFound:
        return False
    return True


def stale_entries(directory: Path, cutoff: float, keep: Collection[Path] = ()) -> Iterator[Path]:
    """Entries of ``directory`` nothing has touched since ``cutoff`` (a directory counts
    as touched when anything inside it was); the directories in ``keep`` are never taken."""
    if not directory.is_dir():
        return
    kept = {path.resolve() for path in keep}
    for entry in directory.iterdir():
        try:
            if entry.resolve() in kept or _newest_mtime(entry) >= cutoff:
                continue
        except OSError:
            continue  # gone meanwhile
        yield entry


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                with contextlib.suppress(OSError):  # gone meanwhile
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


# -- the sweep -----------------------------------------------------------------------------


class GarbageService:
    """Sweeps the blob store of ``blobs`` and the ``staging_dirs`` (see the module)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        grace_seconds: float,
        staging_dirs: Sequence[Path] = (),
        staging_grace_seconds: float = 6 * 3600.0,
        clock: Callable[[], datetime] = utcnow,
        abandoned_uploads: Callable[[float], int] | None = None,
    ) -> None:
        self.db = db
        # Aborts direct-upload sessions begun before an epoch time and returns how many
        # (UploadService.sweep_abandoned); None where the store has no direct transfers.
        self.abandoned_uploads = abandoned_uploads
        self.blobs = blobs
        self.grace_seconds = grace_seconds
        self.staging_dirs = list(staging_dirs)
        self.staging_grace_seconds = staging_grace_seconds
        self.clock = clock

    def sweep_for(self, principal: Principal, grace_seconds: float | None = None) -> SweepReport:
        """An operator's sweep (an admin of tenant ``default``): blobs are shared by every
        tenant, so collecting them is the platform's business, not one tenant's."""
        require_role(principal, Role.ADMIN)
        if not principal.is_operator:
            raise Forbidden("sweeping the blob store is for operators (admins of 'default')")
        return self.sweep(grace_seconds)

    def sweep(self, grace_seconds: float | None = None) -> SweepReport:
        """One sweep with the configured grace period for pins and blobs (or
        ``grace_seconds``); staging files always get the configured staging grace."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        now = self.clock()
        cutoff = now - timedelta(seconds=grace)
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            stale = stale_pins(blobrefs.pin_ages(session), cutoff)
            blobrefs.drop_pins(session, stale)
            # A claim is a direct upload's object still unchecked: past the grace its
            # upload is taken for crashed, and the object goes at once (never trusted).
            claims = stale_pins(blobrefs.pin_ages(session, blobrefs.VERIFY_CLAIM), cutoff)
            unchecked = [
                key for c in claims for key in blobrefs.keys_of(session, blobrefs.VERIFY_CLAIM, c)
            ]
            blobrefs.drop_pins(session, claims, blobrefs.VERIFY_CLAIM)
            for key in blobrefs.unreferenced(session, unchecked):
                self.blobs.delete(key)
        if stale or claims:
            log.warning(
                "dropped %d upload pin(s) and %d unchecked claim(s) older than %gs (crashed)",
                len(stale),
                len(claims),
                grace,
            )
        listed = [
            key
            for prefix in BLOB_PREFIXES
            for key in self.blobs.objects.keys(prefix)
            if is_blob_key(key)
        ]
        deleted, waiting, failed = 0, 0, 0
        for start in range(0, len(listed), BATCH):
            done, failures, waits = self._sweep_batch(listed[start : start + BATCH], now, cutoff)
            deleted, failed, waiting = deleted + done, failed + failures, waiting + waits
        with self.db.session(write=True) as session:  # orphans deleted by their services
            blobrefs.lock(session)
            blobrefs.forget_orphans(session, set(blobrefs.orphans_seen(session)) - set(listed))
        staged = self._sweep_staging(time.time() - self.staging_grace_seconds)
        aborted = 0
        if self.abandoned_uploads is not None:
            aborted = self.abandoned_uploads(cutoff.timestamp())
        report = SweepReport(
            grace_seconds=grace,
            pins_dropped=len(stale) + len(claims),
            blobs_listed=len(listed),
            blobs_deleted=deleted,
            blobs_waiting=waiting,
            blobs_failed=failed,
            staging_removed=staged,
            uploads_aborted=aborted,
        )
        if deleted or failed or staged or aborted:
            log.info("blob sweep: %s", report.model_dump())
        return report

    def _sweep_batch(
        self, keys: Sequence[str], now: datetime, cutoff: datetime
    ) -> tuple[int, int, int]:
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            plan = plan_blobs(
                keys,
                blobrefs.referenced(session, keys),
                blobrefs.orphans_seen(session, keys),
                now,
                cutoff,
            )
            blobrefs.forget_orphans(session, plan.forget)
            blobrefs.mark_orphans(session, plan.mark, now)
            gone: list[str] = []
            for key in plan.delete:
                try:
                    self.blobs.delete(key)
                except Exception:
                    log.warning("could not delete unreferenced blob %s", key, exc_info=True)
                else:
                    gone.append(key)
            blobrefs.forget_orphans(session, gone)
        return len(gone), len(plan.delete) - len(gone), len(plan.waiting)

    def _sweep_staging(self, cutoff: float) -> int:
        removed = 0
        for directory in self.staging_dirs:
            for entry in stale_entries(directory, cutoff, keep=self.staging_dirs):
                try:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
                except OSError:
                    log.warning("could not remove stale staging file %s", entry)
        return removed


def garbage_sweep(garbage: GarbageService, interval: float) -> Ticker:
    """Background work (see :class:`~nimbus.api.state.Background`): a sweep every
    ``interval`` seconds, the first one ``interval`` after start; a failed one (the store
    unreachable) is logged and the next one retries. A sweep may delete many blobs: ``stop``
    waits up to 30 s for the one in progress."""
    return Ticker("blob-sweep", interval, garbage.sweep, join_timeout=30.0)
