"""Envelope keys: a master key wraps one data key per tenant; the data keys seal blobs.

The master key (``NIMBUS_ENCRYPTION_KEY``) never touches a blob. Each tenant's data key is
random, wrapped (AES-256-GCM under the master key, bound to its key id and tenant) and kept
by a :class:`WrappedKeyStore` that the control plane injects (the metadata store: the
storage layer knows nothing of it). Rotating the master key re-wraps every data key in one
transaction; the blobs, sealed by the data keys, are not rewritten.

A key id is 8 bytes, shown as 16 hex digits. A master key's id is the first 8 bytes of
``HMAC-SHA256(master key, "nimbus master key id")``: it names the key without revealing it,
so a server can say at start which key it uses and that a key is the wrong one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nimbus.errors import EncryptionKeyMismatch
from nimbus.storage.encryption import KEY_ID_BYTES

KEY_BYTES = 32
_NONCE = 12


def new_key_id() -> str:
    return os.urandom(KEY_ID_BYTES).hex()


@dataclass(frozen=True)
class WrappedKey:
    """A tenant's data key as stored: sealed under the master key ``master_key_id``."""

    key_id: str  # 16 hex digits
    tenant_id: int
    master_key_id: str
    wrapped: bytes  # nonce (12) + AES-256-GCM ciphertext of the 32-byte key (+ tag)


@dataclass(frozen=True)
class DataKey:
    key_id: str
    tenant_id: int
    secret: bytes = b""

    def __repr__(self) -> str:  # never the secret, in a log or a trace
        return f"DataKey({self.key_id}, tenant {self.tenant_id})"


class MasterKey:
    """The key-encryption key; wraps and unwraps data keys."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("a master key is 32 bytes")
        self._aead = AESGCM(secret)
        self.id = hmac.new(secret, b"nimbus master key id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey({self.id})"

    @staticmethod
    def _context(key_id: str, tenant_id: int) -> bytes:
        return f"nimbus data key {key_id} tenant {tenant_id}".encode()

    def wrap(self, key: DataKey) -> WrappedKey:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, key.secret, self._context(key.key_id, key.tenant_id))
        return WrappedKey(key.key_id, key.tenant_id, self.id, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        if wrapped.master_key_id != self.id:
            raise EncryptionKeyMismatch(
                f"data key {wrapped.key_id} (tenant {wrapped.tenant_id}) is wrapped under "
                f"master key {wrapped.master_key_id}, but this server's NIMBUS_ENCRYPTION_KEY "
                f"is key {self.id}: start it with the key the data was stored under"
            )
        nonce, sealed = wrapped.wrapped[:_NONCE], wrapped.wrapped[_NONCE:]
        try:
            secret = self._aead.decrypt(
                nonce, sealed, self._context(wrapped.key_id, wrapped.tenant_id)
            )
        except InvalidTag:
            raise EncryptionKeyMismatch(
                f"data key {wrapped.key_id} does not unwrap under master key {self.id} "
                "(its stored form was changed)"
            ) from None
        return DataKey(wrapped.key_id, wrapped.tenant_id, secret)


class WrappedKeyStore(Protocol):
    """Where wrapped data keys are kept (the control plane's metadata store)."""

    def get(self, key_id: str) -> WrappedKey | None: ...

    def for_tenant(self, tenant_id: int) -> WrappedKey | None: ...

    def add(self, key: WrappedKey) -> WrappedKey:
        """Keep ``key`` as its tenant's data key and return it, or return the key the tenant
        already has (another process made one first)."""

    def master_key_ids(self) -> dict[str, int]:
        """How many data keys each master key wraps."""

    def rewrap(self, change: Callable[[WrappedKey], WrappedKey | None]) -> int:
        """Replace every key by ``change(key)`` (None: keep it) in one transaction; returns
        how many changed."""


class Keyring:
    """Data keys by tenant and by key id, unwrapped once and kept in memory."""

    def __init__(self, master: MasterKey, store: WrappedKeyStore) -> None:
        self.master = master
        self.store = store
        self._by_id: dict[str, DataKey] = {}
        self._by_tenant: dict[int, DataKey] = {}
        self._lock = threading.Lock()

    def check(self) -> int:
        """Fail closed, before anything is served, when a stored data key is wrapped under
        another master key; returns how many data keys there are."""
        counts = self.store.master_key_ids()
        others = sorted(k for k in counts if k != self.master.id)
        if others:
            raise EncryptionKeyMismatch(
                f"NIMBUS_ENCRYPTION_KEY is master key {self.master.id}, but "
                f"{sum(counts[k] for k in others)} data key(s) are wrapped under master key "
                f"{', '.join(others)}: start the server with that key (or, to move to this "
                "one, run `nimbus admin rotate-key` with the old key set)"
            )
        return counts.get(self.master.id, 0)

    def for_tenant(self, tenant_id: int) -> DataKey:
        """The tenant's data key, made (and stored, wrapped) on its first blob."""
        with self._lock:
            if tenant_id in self._by_tenant:
                return self._by_tenant[tenant_id]
            wrapped = self.store.for_tenant(tenant_id)
            if wrapped is None:
                self.check()  # never wrap a new key under a master key that was rotated out
                made = DataKey(new_key_id(), tenant_id, os.urandom(KEY_BYTES))
                wrapped = self.store.add(self.master.wrap(made))
            return self._remember(self.master.unwrap(wrapped))

    def by_id(self, key_id: bytes) -> DataKey:
        """The data key a blob's header names; EncryptionKeyMismatch when it is unknown."""
        hex_id = key_id.hex()
        with self._lock:
            if hex_id in self._by_id:
                return self._by_id[hex_id]
            wrapped = self.store.get(hex_id)
            if wrapped is None:
                raise EncryptionKeyMismatch(
                    f"data key {hex_id} is not in this server's keyring (master key "
                    f"{self.master.id}): the blob was stored by another installation"
                )
            return self._remember(self.master.unwrap(wrapped))

    def _remember(self, key: DataKey) -> DataKey:
        self._by_id[key.key_id] = key
        self._by_tenant.setdefault(key.tenant_id, key)
        return key


def rotate(store: WrappedKeyStore, old: MasterKey, new: MasterKey) -> int:
    """Re-wrap every data key wrapped under ``old`` (or already under ``new``: a rerun
    after an interrupted rotation changes nothing) under ``new``, in one transaction;
    returns how many were re-wrapped. A key under any other master key stops it all."""

    def change(key: WrappedKey) -> WrappedKey | None:
        if key.master_key_id == new.id:
            return None
        return new.wrap(old.unwrap(key))

    return store.rewrap(change)
