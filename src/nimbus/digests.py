"""A file's SHA-256, at once or begun in the background.

A direct upload declares the file's SHA-256 before its first part (the hash is the key the
parts go to), so hashing sits on an upload's critical path: 0.5-0.8 s per GiB. The CLI
begins it in a thread of its own as its upload command starts (:class:`FileDigest`), so it
runs on the second core while the command imports the SDK, builds its client and looks
for an interrupted upload to resume; the SDK takes the result when it needs it.

Light on purpose (hashlib and threading): the CLI imports it before anything else.
"""

from __future__ import annotations

import hashlib
import stat
import threading
from pathlib import Path

# Read and hashed 16 MiB at a time. The read and the hash each let go of the GIL, but must
# take it back after: behind a main thread that imports, each such turn waits up to the
# interpreter's switch interval (5 ms). With 1 MiB reads the hash of a GiB then ended
# 0.74 s after the command began (imports 0.26 s, the hash alone 0.55 s), with 16 MiB 0.63 s;
# a memory map barely better (0.59 s), and it would kill the process (SIGBUS) were the file
# cut short meanwhile.
READ_SIZE = 16 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FileDigest:
    """The SHA-256 of the file at ``path``, computed in a daemon thread from the moment this
    object is made; :meth:`result` waits for it. What it hashed is the file as it was then:
    :meth:`describes` tells whether a path still names that file (same path, size and
    modification time). A hash is only ever declared: the server checks the bytes it gets
    against it, so a file changed meanwhile fails the upload, never records it."""

    def __init__(self, path: Path) -> None:
        info = path.stat()  # a missing file raises here, in the caller
        self.path = path.resolve()
        self.size, self.mtime_ns = info.st_size, info.st_mtime_ns
        self._stop = threading.Event()
        self._value: str | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    @classmethod
    def begin(cls, path: Path, min_bytes: int) -> FileDigest | None:
        """The hash of ``path`` begun, when it is a regular file of ``min_bytes`` or more;
        None otherwise (a directory, a smaller file, one that cannot be looked at: whoever
        uploads it finds out, and says why)."""
        try:
            info = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size < min_bytes:
            return None
        try:
            return cls(path)
        except OSError:
            return None

    def _run(self) -> None:
        digest = hashlib.sha256()
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        try:
            with open(self.path, "rb", buffering=0) as source:
                while count := source.readinto(buffer):
                    if self._stop.is_set():
                        return
                    digest.update(view[:count])
        except OSError as exc:
            self._error = exc
            return
        self._value = digest.hexdigest()

    def describes(self, path: Path) -> bool:
        """Whether ``path`` is the file this digest is of, unchanged since it began (by
        path, size and modification time)."""
        try:
            info = path.stat()
        except OSError:
            return False
        return (
            path.resolve() == self.path
            and info.st_size == self.size
            and info.st_mtime_ns == self.mtime_ns
        )

    def result(self) -> str:
        """The hex SHA-256, once the thread is done; its ``OSError`` if it could not read
        the file; ``RuntimeError`` after :meth:`cancel`."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise RuntimeError(f"the hash of {self.path} was cancelled")
        return self._value

    def cancel(self) -> None:
        """Stop reading (the result is not needed after all: a resumed upload knows it)."""
        self._stop.set()
