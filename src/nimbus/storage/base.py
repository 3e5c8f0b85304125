"""The object store interface: opaque bytes under string keys.

Backends know nothing of hashes; content addressing and verification live in
:mod:`nimbus.storage.blobs`, written once above every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class ObjectStore(Protocol):
    """Where blobs live: a local directory, memory, or an S3-compatible bucket."""

    def put_file(self, key: str, source: Path) -> None:
        """Store the file at ``source`` under ``key``, atomically; ``source`` is consumed.

        The object either appears whole under ``key`` or not at all; the backend may move
        ``source`` instead of copying it. Writes are create-only: when ``key`` already
        exists the existing object is kept (keys are content hashes, so it holds the same
        bytes) and ``source`` is discarded. If the write fails, ``source`` is left in place.
        """

    def open(self, key: str) -> BinaryIO:
        """Open the object for reading; raises ``KeyError`` if absent."""

    def local_path(self, key: str) -> Path | None:
        """A path to the object on this machine's disk, or None if the backend has none."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Size in bytes; raises ``KeyError`` if absent."""

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are ignored."""

    def keys(self, prefix: str = "") -> Iterator[str]: ...
