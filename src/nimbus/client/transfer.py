"""Moving files: reproducible tars of directories, chunked uploads, verified downloads."""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from nimbus.errors import CorruptBlob
from nimbus.ranges import WRITE_SIZE

CHUNK_SIZE = 1024 * 1024

Progress = Callable[[int, int], None]
"""A progress callback: ``progress(bytes_done, bytes_total)``."""


@contextmanager
def packed(
    path: Path, default_name: str = "dataset", exclude: frozenset[str] = frozenset()
) -> Iterator[tuple[Path, str]]:
    """A file as is; a directory as a temporary, reproducible .tar of its contents.

    Entries under a folder named in ``exclude`` (e.g. ``__pycache__``) are left out.
    """
    if not path.is_dir():
        yield path, path.name
        return
    with tempfile.TemporaryDirectory(prefix="nimbus-upload-") as tmp:
        archive = Path(tmp) / f"{path.resolve().name or default_name}.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(path.rglob("*")):
                if child.is_symlink() or not (child.is_file() or child.is_dir()):
                    continue  # links could point anywhere; the server would refuse them anyway
                if exclude.intersection(child.relative_to(path).parts):
                    continue
                tar.add(
                    child,
                    arcname=child.relative_to(path).as_posix(),
                    recursive=False,
                    filter=_normalized,
                )
        yield archive, archive.name


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same files, same bytes: re-uploading a folder finds the existing version.
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def chunks(path: Path, total: int, progress: Progress | None) -> Iterator[bytes]:
    """The bytes of ``path`` in :data:`CHUNK_SIZE` pieces, reporting after each."""
    sent = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)


def local_name(key: str, meta: Mapping[str, Any], files: Mapping[str, Any]) -> str:
    """The file name on disk: the source keeps its uploaded name unless that could clash."""
    name = Path(str(meta.get("name") or "")).name
    if (
        key == "source"
        and name
        and not name.startswith(".")
        and name not in files
        and name != "version.json"
    ):
        return name
    return Path(key).name or "file"


class Tally:
    """Bytes of several files moving at once, summed for one ``progress(done, total)``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.done = 0
        self._lock = threading.Lock()

    def for_file(self) -> Progress | None:
        """A callback for one file's own ``progress(bytes of it so far, _)``."""
        if self.progress is None:
            return None
        last = [0]

        def report(done: int, _total: int) -> None:
            with self._lock:
                self.done += done - last[0]
                last[0] = done
                if self.progress is not None:
                    self.progress(self.done, self.total)

        return report


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def save(
    response: httpx.Response,
    out: Path,
    meta: Mapping[str, Any],
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    """Stream a response body to ``out`` via a temporary file, verifying hash and size."""
    digest = hashlib.sha256()
    size = 0
    part = out.with_name(f".{out.name}.part")
    try:
        with part.open("wb") as sink:
            for chunk in response.iter_bytes(WRITE_SIZE):
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(done + size, total)
        expected = str(meta.get("key", "")).rpartition("/")[2].lower()
        if _is_sha256(expected) and digest.hexdigest() != expected:
            raise CorruptBlob(f"{out.name}: content does not match its hash {expected}")
        if "size" in meta and size != int(meta["size"]):
            raise CorruptBlob(f"{out.name}: got {size} bytes, expected {meta['size']}")
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return done + size
