"""Blob bookkeeping shared by services: storing files safely, and collecting garbage.

Every change to blob references and every blob deletion happens in a transaction that
holds :func:`nimbus.db.blobrefs.lock`. A service that stores blobs first *pins* their keys
(references owned by the operation in progress), then stores them, then swaps the pin for
its record's references in one transaction: a blob is therefore never deleted between the
moment it is stored and the moment a record refers to it.

A direct upload completed at its content-addressed key holds that key under a *claim*
(:func:`claim`) until the control plane has read the object back and checked its hash; a
pin on a claimed key waits for the check (:func:`pin`). So every object at a key that
somebody pins is one the control plane wrote or checked, and "the key exists" is proof of
the content for whoever holds a pin (``BlobStore.holds``): a lying client's bytes are never
kept for another upload, and deleting them never takes somebody else's blob.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nimbus.db import blobrefs
from nimbus.db.blobrefs import ClaimHolder
from nimbus.db.engine import Database
from nimbus.errors import Conflict
from nimbus.storage.blobs import CHUNK, BlobRef, BlobStore

log = logging.getLogger(__name__)

CLAIM_WAIT_SECONDS = 600.0  # the longest a pin waits for a direct upload's check
CLAIM_JUDGE_SECONDS = 1.0  # how often a waiting pin asks whether a claim's holder died


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size


def adopt_file(blobs: BlobStore, path: Path, sha256: str, size: int) -> BlobRef:
    """Move a file whose hash is known into the store; ``path`` is consumed.

    Nothing is copied when ``path`` sits in ``blobs.staging_dir`` of a local store (a
    rename); an identical blob already stored is kept and ``path`` deleted. ``blobs`` is
    the owning tenant's view (:meth:`BlobStore.for_tenant`).
    """
    key = blobs.key_for(sha256)
    if blobs.holds(key, size):  # a damaged copy of another size is deleted first
        path.unlink(missing_ok=True)
        return BlobRef(key, size)
    blobs.objects.put_file(key, path)
    return BlobRef(key, size)


def put_copy(blobs: BlobStore, path: Path) -> BlobRef:
    """Store a copy of ``path`` (left in place), hashing it on the way. Like
    ``BlobStore.put_file``, but the staging file is removed even if the backend fails."""
    with blobs.writer() as writer, open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            writer.write(chunk)
        try:
            return writer.commit()
        except BaseException:
            writer.path.unlink(missing_ok=True)
            raise


def move_in(blobs: BlobStore, path: Path, sha256: str, size: int) -> BlobRef:
    """Store ``path`` (consumed) under its known hash: renamed into the staging directory
    when it is on the same file system, copied otherwise."""
    staged = blobs.staging_dir / f"in-{secrets.token_hex(8)}"
    try:
        os.replace(path, staged)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        ref = put_copy(blobs, path)
        path.unlink(missing_ok=True)
        return ref
    try:
        return adopt_file(blobs, staged, sha256, size)
    finally:
        staged.unlink(missing_ok=True)


def delete_quietly(blobs: BlobStore, keys: Iterable[str]) -> None:
    """Delete blobs; a failure leaves the blob (logged) to the garbage sweeper rather than
    failing the caller (:mod:`nimbus.services.garbage`)."""
    for key in keys:
        try:
            blobs.delete(key)
        except Exception:
            log.warning("could not delete unreferenced blob %s", key, exc_info=True)


def new_pin_id() -> int:
    return secrets.randbelow(2**31 - 2) + 1


def pin(
    db: Database,
    keys: Iterable[str],
    pin_id: int | None = None,
    *,
    wait: float = CLAIM_WAIT_SECONDS,
    claims: Claims | None = None,
) -> int:
    """Reference ``keys`` on behalf of an operation in progress (pin ``pin_id``, or a new
    one), so that no deletion takes them before the operation records its own references.
    A key under a claim (a direct upload's object being checked) is pinned once the check
    is over, or at once when ``claims`` finds the claim's holder dead (the claim and its
    unchecked object go); after ``wait`` seconds, Conflict."""
    keys = set(keys)
    pin_id = pin_id if pin_id is not None else new_pin_id()
    deadline = time.monotonic() + wait
    judged = 0.0
    while True:
        with db.session(write=True) as session:
            blobrefs.lock(session)
            busy = blobrefs.claimed(session, keys)
            if not busy:
                blobrefs.add(session, blobrefs.UPLOAD_PIN, pin_id, keys)
                return pin_id
        now = time.monotonic()
        if claims is not None and now - judged >= CLAIM_JUDGE_SECONDS:
            judged = now
            if claims.drop_dead(busy):
                continue
        if now >= deadline:
            raise Conflict(
                f"blob {busy[0]} is still being checked after another upload's transfer "
                f"({wait:g} s); try again"
            )
        time.sleep(0.1)


def is_referenced(db: Database, key: str) -> bool:
    """Whether anything (a record, a pin, a claim) refers to ``key``."""
    with db.session() as session:
        return bool(blobrefs.referenced(session, [key]))


def claim(db: Database, key: str, holder: ClaimHolder | None = None) -> int | None:
    """Claim ``key`` for a direct upload's unchecked object (see the module) on behalf of
    ``holder``: the claim id, or None when anything refers to the key (a record, a pin,
    another claim)."""
    claim_id = new_pin_id()
    with db.session(write=True) as session:
        blobrefs.lock(session)
        return claim_id if blobrefs.claim(session, claim_id, key, holder) else None


class Claims:
    """The claims this control plane (``holder``) takes, and the end of those whose holder
    is provably dead (``dead``: a control plane killed mid-check; see
    :meth:`nimbus.services.cluster.ClusterService.holder_dead`). Such a claim would
    otherwise hold its key, and make every upload of the same content wait, until the
    garbage sweep's grace period; it is dropped by the next upload that needs the key.
    ``blobs`` is the store's view without tenants (claims are taken on its keys)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        holder: ClaimHolder,
        dead: Callable[[ClaimHolder], bool],
    ) -> None:
        self.db, self.blobs, self.holder, self.dead = db, blobs, holder, dead

    def take(self, key: str) -> int | None:
        """Claim ``key`` (see :func:`claim`), after dropping claims of dead holders on it."""
        claim_id = claim(self.db, key, self.holder)
        if claim_id is None and self.drop_dead([key]):
            claim_id = claim(self.db, key, self.holder)
        return claim_id

    def drop_dead(self, keys: Iterable[str]) -> int:
        """Drop every claim on ``keys`` whose holder is provably dead, and delete the
        unchecked objects at the keys that nothing else refers to then (under the lock
        that orders reference changes, as :func:`drop_claim`: the key was nobody else's).
        Returns how many claims went; a failed deletion keeps the claim."""
        keys = set(keys)
        with self.db.session() as session:
            holders = blobrefs.claims_on(session, keys)
        dead = {
            claim_id: holder
            for claim_id, holder in holders.items()
            if holder is not None and holder != self.holder and self.dead(holder)
        }
        if not dead:
            return 0
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            for claim_id, holder in dead.items():
                for key in blobrefs.release(session, blobrefs.VERIFY_CLAIM, claim_id):
                    self.blobs.delete(key)
                    log.warning(
                        "dropped claim %d on %s: its holder, control plane %s (pid %d on %s), "
                        "is dead; its unchecked object was deleted",
                        claim_id,
                        key,
                        holder.plane_id,
                        holder.pid,
                        holder.hostname,
                    )
        return len(dead)


def confirm_claim(db: Database, claim_id: int) -> int:
    """The claimed object proved good: the claim becomes an upload pin (its id returned);
    Conflict when the sweeper took the claim (and the object) meanwhile."""
    pin_id = new_pin_id()
    with db.session(write=True) as session:
        blobrefs.lock(session)
        blobrefs.confirm_claim(session, claim_id, pin_id)
    return pin_id


def drop_claim(db: Database, blobs: BlobStore, claim_id: int) -> None:
    """The claimed object is bad, or its check failed: it goes with the claim. Nobody else
    refers to a claimed key, so nobody else's blob is deleted (a claim the sweeper took is
    already gone, with its object). On a failure the claim stays, for the sweeper."""
    try:
        with db.session(write=True) as session:
            blobrefs.lock(session)
            for key in blobrefs.release(session, blobrefs.VERIFY_CLAIM, claim_id):
                blobs.delete(key)
    except Exception:
        log.exception("could not drop a direct upload's claim (left to the sweeper)")


def discard(db: Database, blobs: BlobStore, keys: Iterable[str], pin_id: int | None) -> None:
    """Undo a failed operation: drop its pin, delete those of ``keys`` nothing refers to."""
    candidates = set(keys)
    try:
        with db.session(write=True) as session:
            blobrefs.lock(session)
            if pin_id is not None:
                candidates.update(blobrefs.release(session, blobrefs.UPLOAD_PIN, pin_id))
            delete_quietly(blobs, blobrefs.unreferenced(session, candidates))
    except Exception:
        log.exception("could not clean up after a failed operation (left to the sweeper)")


class PinnedBatch:
    """The blobs one operation stores: each pinned before it is stored. ``blobs`` is the
    owning tenant's view of the store (:meth:`BlobStore.for_tenant`).

    Stores run on a few threads (hashing and fsync overlap). ``discard()`` undoes
    everything; after success the caller releases ``pin_id`` in the transaction that adds
    its own references.
    """

    def __init__(
        self, db: Database, blobs: BlobStore, workers: int = 3, *, claims: Claims | None = None
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.claims = claims
        self.pin_id: int | None = None
        self.keys: set[str] = set()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="blobs")

    def _pin(self, keys: Iterable[str]) -> None:
        keys = set(keys)
        self.pin_id = pin(self.db, keys, self.pin_id, claims=self.claims)
        self.keys.update(keys)

    def move_in_background(self, path: Path, sha256: str, size: int) -> Future[BlobRef]:
        """Start storing ``path`` (consumed) under its known hash."""
        self._pin([self.blobs.key_for(sha256)])
        return self._pool.submit(move_in, self.blobs, path, sha256, size)

    def move_files(
        self, paths: Mapping[str, Path], digests: Mapping[str, str] | None = None
    ) -> dict[str, BlobRef]:
        """Store files (consumed) and return their refs by name. ``digests`` holds the
        SHA-256 of files already hashed as they were written; the others are hashed here."""
        names = sorted(paths)
        known = digests or {}

        def digest(name: str) -> tuple[str, int]:
            if name in known:
                return known[name], paths[name].stat().st_size
            return hash_file(paths[name])

        hashes = list(self._pool.map(digest, names))
        self._pin(self.blobs.key_for(sha) for sha, _ in hashes)
        futures = [
            self._pool.submit(move_in, self.blobs, paths[name], sha, size)
            for name, (sha, size) in zip(names, hashes, strict=True)
        ]
        return {name: future.result() for name, future in zip(names, futures, strict=True)}

    def discard(self) -> None:
        """Wait for stores in flight, then drop the pin and every unreferenced blob."""
        self._pool.shutdown(wait=True)
        if self.pin_id is not None or self.keys:
            discard(self.db, self.blobs, self.keys, self.pin_id)
        self.pin_id, self.keys = None, set()

    def close(self) -> None:
        """Wait for stores in flight (the pin stays: the caller released or discarded it)."""
        self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class FileDownload:
    """A stored file on its way out: the name to save it as, its size, its bytes."""

    name: str
    size: int
    chunks: Iterator[bytes]


def verified_download(blobs: BlobStore, key: str, size: int, name: str) -> FileDownload:
    """The blob ``key`` as a download named ``name``: verified against its hash before the
    first byte is handed out (CorruptBlob otherwise), and again as it streams."""
    blobs.verify(key)
    return FileDownload(name, size, blobs.iter_verified(key))
