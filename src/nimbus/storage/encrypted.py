"""An object store that encrypts what it stores: any backend below, ciphertext only.

:class:`EncryptedObjectStore` wraps another :class:`~nimbus.storage.base.ObjectStore`.
Objects under ``tenants/<id>/`` are sealed with that tenant's data key (the format of
:mod:`nimbus.storage.encryption`) before they reach the backend and authenticated segment by
segment as they are read back; sizes are the plaintext's. Objects outside ``tenants/`` are
blobs stored before encryption was turned on: they are read as they are (still checked
against their hash above), but nothing new is ever written there.

It offers the :class:`ObjectStore` methods and nothing more: no ``local_path`` (a file on
disk holds ciphertext, which callers expecting the blob's bytes must never get: they copy
the decrypted, verified bytes into their cache instead) and no signing of direct-transfer
URLs (a client or job holds no key), so with encryption on every byte passes through the
control plane.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nimbus.errors import CorruptBlob
from nimbus.storage.base import ObjectStore
from nimbus.storage.blobs import tenant_of
from nimbus.storage.encryption import SEGMENT, DecryptingReader, encrypt_stream, plaintext_size
from nimbus.storage.keyring import Keyring

_BUFFER = SEGMENT + 64 * 1024


class EncryptedObjectStore:
    """Envelope encryption over ``inner``: tenants' objects sealed with their data keys."""

    def __init__(self, inner: ObjectStore, keyring: Keyring, staging_dir: Path) -> None:
        self.inner = inner
        self.keyring = keyring
        # Ciphertext is written where the backend can take it without a copy (a local
        # store's own staging directory), else into ``staging_dir``.
        self._staging = Path(getattr(inner, "staging_dir", staging_dir))
        self._staging.mkdir(parents=True, exist_ok=True)

    @property
    def master_key_id(self) -> str:
        return self.keyring.master.id

    def _tenant(self, key: str) -> int:
        tenant = tenant_of(key)
        if tenant is None:
            # A call site that forgot to say whose blob this is: fail rather than store
            # plaintext, or share one object between tenants.
            raise ValueError(f"encrypted storage keeps tenants' blobs only, not {key!r}")
        return tenant

    def put_file(self, key: str, source: Path) -> None:
        data_key = self.keyring.for_tenant(self._tenant(key))
        fd, name = tempfile.mkstemp(dir=self._staging, prefix="sealed-")
        sealed = Path(name)
        try:
            with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                encrypt_stream(src, out, bytes.fromhex(data_key.key_id), data_key.secret)
            self.inner.put_file(key, sealed)
        finally:
            sealed.unlink(missing_ok=True)
        Path(source).unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        tenant = tenant_of(key)
        stream = self.inner.open(key)
        if tenant is None:
            return stream  # stored before encryption was turned on

        def lookup(key_id: bytes) -> bytes:
            data_key = self.keyring.by_id(key_id)
            if data_key.tenant_id != tenant:
                raise CorruptBlob(
                    f"blob {key} is sealed with tenant {data_key.tenant_id}'s data key, "
                    f"not tenant {tenant}'s"
                )
            return data_key.secret

        try:
            reader = DecryptingReader(stream, lookup, key)
        except BaseException:
            stream.close()
            raise
        return io.BufferedReader(reader, _BUFFER)

    def local_path(self, key: str) -> Path | None:
        return None if tenant_of(key) is not None else self.inner.local_path(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        size = self.inner.size(key)
        return size if tenant_of(key) is None else plaintext_size(size, key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.keys(prefix)
