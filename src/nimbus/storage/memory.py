"""In-memory object store, for tests and throwaway runs."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class MemoryObjectStore:
    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put_file(self, key: str, source: Path) -> None:
        data = Path(source).read_bytes()
        Path(source).unlink()
        with self._lock:
            self._objects.setdefault(key, data)

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            return io.BytesIO(self._objects[key])

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        return key in self._objects

    def size(self, key: str) -> int:
        return len(self._objects[key])

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def keys(self, prefix: str = "") -> Iterator[str]:
        yield from sorted(k for k in list(self._objects) if k.startswith(prefix))

    def corrupt(self, key: str, offset: int = 0) -> None:
        """Flip one byte, to test that corruption is caught."""
        with self._lock:
            data = bytearray(self._objects[key])
            data[offset] ^= 0xFF
            self._objects[key] = bytes(data)
