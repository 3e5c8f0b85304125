"""Content-addressed blobs over any :class:`ObjectStore`.

Keys are ``sha256/<2 hex>/<64 hex>``. The hash is computed while bytes are written (so
the key is the hash of what was really stored) and checked again whenever bytes are read
back: a flipped byte raises :class:`CorruptBlob` and is never served.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nimbus.errors import CorruptBlob, NotFound
from nimbus.storage.base import ObjectStore

CHUNK = 1024 * 1024
_KEY_RE = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})$")


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
    if not match or match.group(1) != match.group(2)[:2]:
        raise NotFound(f"not a blob key: {key!r}")
    return match.group(2)


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

    def __init__(self, objects: ObjectStore, staging_dir: Path) -> None:
        self.objects = objects
        self.staging_dir = Path(getattr(objects, "staging_dir", staging_dir))
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    def writer(self) -> BlobWriter:
        return BlobWriter(self, self.staging_dir)

    def _adopt(self, path: Path, digest: str, size: int) -> BlobRef:
        key = key_for(digest)
        if self.objects.exists(key):
            if self.objects.size(key) == size:
                path.unlink(missing_ok=True)
                return BlobRef(key, size)
            # Writes are create-only: a damaged copy must go before the good one goes in.
            self.objects.delete(key)
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
