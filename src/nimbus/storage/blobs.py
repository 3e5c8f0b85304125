"""Content-addressed blobs over any :class:`ObjectStore`.

Keys are ``sha256/<2 hex>/<64 hex>``. The hash is computed while bytes are written (so
the key is the hash of what was really stored) and checked again whenever bytes are read
back: a flipped byte raises :class:`CorruptBlob` and is never served.

A store may be *tenant-scoped* (encryption at rest: :mod:`nimbus.storage.encrypted`): then
each tenant's blobs live under ``tenants/<id>/sha256/<2 hex>/<64 hex>``, identical content is
stored once per tenant (never shared across tenants, which would tell one tenant what
another holds), and whoever stores a blob says whose it is: :meth:`BlobStore.for_tenant`.
Otherwise ``for_tenant`` is the store itself and every tenant shares one copy, as before.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nimbus.errors import CorruptBlob, NotFound
from nimbus.ranges import WRITE_SIZE
from nimbus.storage.base import ObjectStore

CHUNK = WRITE_SIZE  # read, hashed and written this much at a time (nimbus.ranges)
_KEY_RE = re.compile(r"^(?:tenants/([1-9][0-9]{0,18})/)?sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
TENANTS = "tenants/"


@dataclass(frozen=True)
class BlobRef:
    key: str
    size: int

    @property
    def sha256(self) -> str:
        return self.key.rsplit("/", 1)[1]


def key_for(digest: str) -> str:
    return f"sha256/{digest[:2]}/{digest}"


def digest_of(key: str) -> str:
    match = _KEY_RE.match(key)
    if not match or match.group(2) != match.group(3)[:2]:
        raise NotFound(f"not a blob key: {key!r}")
    return match.group(3)


def tenant_of(key: str) -> int | None:
    """The tenant a tenant-scoped key (``tenants/<id>/...``) belongs to; None otherwise."""
    if not key.startswith(TENANTS):
        return None
    head = key[len(TENANTS) :].split("/", 1)[0]
    return int(head) if head.isdigit() and not head.startswith("0") else None


class BlobWriter:
    """Streams bytes to a staging file while hashing them; ``commit`` stores the blob."""

    def __init__(self, store: BlobStore, staging_dir: Path) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=staging_dir, prefix="blob-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> BlobRef:
        self._file.close()
        ref = self._store._adopt(self.path, self._hash.hexdigest(), self.size)
        self._done = True
        return ref

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._done = True
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


class _VerifyingReader:
    """Yields chunks of a blob; raises CorruptBlob at the end if the hash disagrees."""

    def __init__(self, stream: BinaryIO, key: str) -> None:
        self._stream = stream
        self._key = key

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        try:
            while chunk := self._stream.read(CHUNK):
                digest.update(chunk)
                yield chunk
        finally:
            self._stream.close()
        if digest.hexdigest() != digest_of(self._key):
            raise CorruptBlob(f"blob {self._key} is corrupt: its content no longer matches")


class BlobStore:
    """Content-addressed storage; identical content is stored once."""

    def __init__(
        self, objects: ObjectStore, staging_dir: Path, *, tenant_scoped: bool = False
    ) -> None:
        self.objects = objects
        self.staging_dir = Path(getattr(objects, "staging_dir", staging_dir))
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.tenant_scoped = tenant_scoped
        self._prefix = ""

    def for_tenant(self, tenant_id: int) -> BlobStore:
        """This store as seen by a tenant storing blobs: on a tenant-scoped store its keys
        are the tenant's own (``tenants/<id>/sha256/...``); otherwise the store itself.
        Reads take any key, scoped or not."""
        if not self.tenant_scoped:
            return self
        if tenant_id < 1:
            raise ValueError(f"no tenant {tenant_id}")
        view = copy.copy(self)
        view._prefix = f"{TENANTS}{tenant_id}/"
        return view

    def key_for(self, digest: str) -> str:
        """The key content of ``digest`` is stored under by this store (or view)."""
        if self.tenant_scoped and not self._prefix:
            raise ValueError("a tenant-scoped store stores blobs through for_tenant(id)")
        return self._prefix + key_for(digest)

    def holds(self, key: str, size: int) -> bool:
        """Whether ``key`` is stored whole (``size`` bytes); a stored copy of another size,
        or one whose size no encryption produces, is damaged and deleted here."""
        if not self.objects.exists(key):
            return False
        try:
            if self.objects.size(key) == size:
                return True
        except CorruptBlob:
            pass
        # Writes are create-only: a damaged copy must go before the good one goes in.
        self.objects.delete(key)
        return False

    def writer(self) -> BlobWriter:
        return BlobWriter(self, self.staging_dir)

    def _adopt(self, path: Path, digest: str, size: int) -> BlobRef:
        key = self.key_for(digest)
        if self.holds(key, size):
            path.unlink(missing_ok=True)
            return BlobRef(key, size)
        self.objects.put_file(key, path)
        return BlobRef(key, size)

    def put_file(self, path: Path) -> BlobRef:
        """Store a copy of the file at ``path`` (the file itself is left in place)."""
        with self.writer() as w, open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def put_bytes(self, data: bytes) -> BlobRef:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def exists(self, key: str) -> bool:
        return self.objects.exists(key)

    def size(self, key: str) -> int:
        try:
            return self.objects.size(key)
        except KeyError:
            raise NotFound(f"blob {key} not found") from None

    def _open(self, key: str) -> BinaryIO:
        digest_of(key)
        try:
            return self.objects.open(key)
        except KeyError:
            raise NotFound(f"blob {key} not found") from None

    def iter_verified(self, key: str) -> Iterator[bytes]:
        """Chunks of the blob, hash-checked as they stream (CorruptBlob at the end)."""
        return iter(_VerifyingReader(self._open(key), key))

    def verify(self, key: str) -> None:
        """Read the whole blob and check its hash; raises CorruptBlob on mismatch."""
        for _ in self.iter_verified(key):
            pass

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_verified(key))

    def local_path(self, key: str, cache_dir: Path | None = None) -> Path:
        """A verified path on local disk, for memory-mapping; copies into ``cache_dir``
        when the backend keeps no local file."""
        self.verify(key)
        path = self.objects.local_path(key)
        if path is not None:
            return path
        if cache_dir is None:
            raise NotFound(f"blob {key} has no local copy and no cache directory was given")
        target = cache_dir / digest_of(key)
        if not target.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir)
            with os.fdopen(fd, "wb") as out:
                for chunk in self.iter_verified(key):
                    out.write(chunk)
            os.replace(tmp, target)
        return target

    def delete(self, key: str) -> None:
        self.objects.delete(key)
