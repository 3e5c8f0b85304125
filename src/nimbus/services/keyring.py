"""The keyring's storage in the metadata store, and master key rotation.

Wrapped data keys live in the ``encryption_keys`` table rather than in the bucket: a
rotation re-wraps all of them in one transaction (the object stores' writes are
create-only, and a half-rotated set of key objects would be a failure mode of its own),
every control plane over the same database shares them, and the bucket holds nothing but
ciphertext and key ids: a copy of it is useless without both the database and the master key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from nimbus.db import encryption_keys as repo
from nimbus.db.engine import Database
from nimbus.db.tables import EncryptionKeyRow
from nimbus.errors import EncryptionKeyMismatch
from nimbus.storage.keyring import Keyring, MasterKey, WrappedKey, rotate


def _wrapped(row: EncryptionKeyRow) -> WrappedKey:
    return WrappedKey(row.key_id, row.tenant_id, row.master_key_id, bytes(row.wrapped))


class DbWrappedKeys:
    """:class:`~nimbus.storage.keyring.WrappedKeyStore` over the metadata store."""

    def __init__(
        self, db: Database, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.db = db
        self.clock = clock

    def get(self, key_id: str) -> WrappedKey | None:
        with self.db.session() as session:
            row = repo.get(session, key_id)
            return _wrapped(row) if row is not None else None

    def for_tenant(self, tenant_id: int) -> WrappedKey | None:
        with self.db.session() as session:
            row = repo.for_tenant(session, tenant_id)
            return _wrapped(row) if row is not None else None

    def add(self, key: WrappedKey) -> WrappedKey:
        with self.db.session(write=True) as session:
            row = repo.add(
                session,
                key_id=key.key_id,
                tenant_id=key.tenant_id,
                master_key_id=key.master_key_id,
                wrapped=key.wrapped,
                now=self.clock(),
            )
            return _wrapped(row)

    def master_key_ids(self) -> dict[str, int]:
        with self.db.session() as session:
            return repo.count_by_master(session)

    def rewrap(self, change: Callable[[WrappedKey], WrappedKey | None]) -> int:
        changed = 0
        with self.db.session(write=True) as session:
            for row in repo.all_keys(session):
                new = change(_wrapped(row))
                if new is None:
                    continue
                row.master_key_id, row.wrapped = new.master_key_id, new.wrapped
                row.rewrapped_at = self.clock()
                changed += 1
        return changed


def open_keyring(db: Database, master: bytes) -> Keyring:
    """The keyring of this installation, checked: EncryptionKeyMismatch (before anything
    is served) when the stored data keys are wrapped under another master key."""
    keyring = Keyring(MasterKey(master), DbWrappedKeys(db))
    keyring.check()
    return keyring


def refuse_unencrypted(db: Database) -> None:
    """Fail closed when blobs were stored encrypted but no master key is set: the server
    would otherwise hand out ciphertext or nothing at all."""
    counts = DbWrappedKeys(db).master_key_ids()
    if counts:
        raise EncryptionKeyMismatch(
            f"blobs are encrypted at rest ({sum(counts.values())} data key(s) under master key "
            f"{', '.join(sorted(counts))}) but NIMBUS_ENCRYPTION_KEY is not set: start the "
            "server with that key"
        )


def rotate_master_key(db: Database, old: bytes, new: bytes) -> tuple[str, str, int]:
    """Re-wrap every data key from master key ``old`` to ``new`` in one transaction; the
    blobs are not touched. Returns the old and new key ids and how many keys changed."""
    old_key, new_key = MasterKey(old), MasterKey(new)
    return old_key.id, new_key.id, rotate(DbWrappedKeys(db), old_key, new_key)
