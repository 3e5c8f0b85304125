"""Jobs' download caches kept under a size: the least recently used files go first.

Jobs download blobs into their tenant's cache (``cache/<tenant>/sha256/<2 hex>/<64 hex>``,
see :class:`nimbus.jobs.isolation.TenantCaches` and :meth:`JobApiClient.blob
<nimbus.runtime.job_api.JobApiClient.blob>`), which marks a file used (its mtime) each time
it hands it out. :func:`cache_sweeper`, a background thread of the server, keeps all
tenants' caches together under ``max_bytes``: :func:`plan_eviction` (pure) picks the least
recently used files, :func:`scan` and :func:`evict` do the I/O.

The caches belong to the job user, and a job may swap any directory in them for a symlink:
the sweep never follows one. It walks with directory file descriptors opened
``O_NOFOLLOW`` and removes names relative to them, so a root server cannot be steered into
deleting files elsewhere. Files used within ``grace_seconds`` are kept even over the limit
(a job may be about to open the path it was just given); lock files of evicted blobs go
with them; leftover partial downloads (``.*.tmp``) older than a day go too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nimbus.ticker import Ticker

log = logging.getLogger(__name__)

BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")
PARTIAL_NAME = re.compile(r"^\..*\.tmp$")
PARTIAL_MAX_AGE = 24 * 3600.0
MAX_DEPTH = 4  # <tenant>/sha256/<2 hex>/<file>
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CachedFile:
    """A file in the caches: its path below the root, size and last use (epoch seconds)."""

    parts: tuple[str, ...]
    size: int
    used: float

    @property
    def partial(self) -> bool:
        return bool(PARTIAL_NAME.match(self.parts[-1]))


@dataclass(frozen=True)
class SweepResult:
    """What one sweep saw and did."""

    total_bytes: int
    removed: int
    freed_bytes: int


def plan_eviction(
    files: Sequence[CachedFile], max_bytes: int, *, now: float, grace_seconds: float
) -> list[CachedFile]:
    """The files to remove so the rest fit ``max_bytes``: partial downloads older than a
    day, then blobs from the least recently used on, skipping any used within
    ``grace_seconds`` of ``now``."""
    stale = [f for f in files if f.partial and now - f.used > PARTIAL_MAX_AGE]
    blobs = sorted((f for f in files if not f.partial), key=lambda f: (f.used, f.parts))
    total = sum(f.size for f in files) - sum(f.size for f in stale)
    chosen = list(stale)
    for f in blobs:
        if total <= max_bytes:
            break
        if now - f.used < grace_seconds:
            continue
        chosen.append(f)
        total -= f.size
    return chosen


def scan(root: Path) -> list[CachedFile]:
    """Every regular file under ``root`` (blobs and partial downloads; lock files are not
    counted), symlinks never followed."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return []
    try:
        return list(_walk(fd, (), 0))
    finally:
        os.close(fd)


def _walk(dir_fd: int, parts: tuple[str, ...], depth: int) -> Iterator[CachedFile]:
    with os.scandir(dir_fd) as entries:
        names = [e.name for e in entries]
    for name in names:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH - 1:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:  # swapped for a symlink meanwhile, or gone
                continue
            try:
                yield from _walk(child, (*parts, name), depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode) and (BLOB_NAME.match(name) or PARTIAL_NAME.match(name)):
            used = max(info.st_atime, info.st_mtime)
            yield CachedFile((*parts, name), info.st_size, used)


def evict(root: Path, files: Sequence[CachedFile]) -> int:
    """Remove ``files`` (and a blob's lock file) under ``root``, each relative to its own
    directory opened without following symlinks; returns the bytes freed."""
    freed = 0
    for f in files:
        try:
            fd = _open_parent(root, f.parts[:-1])
        except OSError:
            continue
        try:
            info = os.stat(f.parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                continue
            os.unlink(f.parts[-1], dir_fd=fd)
            freed += info.st_size
            if not f.partial:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f.parts[-1] + ".lock", dir_fd=fd)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return freed


def _open_parent(root: Path, parts: Sequence[str]) -> int:
    fd = os.open(root, _DIR_FLAGS)
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def sweep(
    root: Path, max_bytes: int, *, now: float | None = None, grace_seconds: float = 60.0
) -> SweepResult:
    """One pass: scan ``root``, remove what :func:`plan_eviction` picks."""
    files = scan(root)
    chosen = plan_eviction(
        files,
        max_bytes,
        now=time.time() if now is None else now,
        grace_seconds=grace_seconds,
    )
    freed = evict(root, chosen) if chosen else 0
    return SweepResult(sum(f.size for f in files), len(chosen), freed)


def cache_sweeper(
    root: Path,
    max_bytes: int,
    interval: float,
    *,
    sweep_fn: Callable[[Path, int], SweepResult] = sweep,
) -> Ticker:
    """Sweeps the caches under ``root`` down to ``max_bytes`` at start and every ``interval``
    seconds in a daemon thread (a ``Background`` of the server: ``start`` and ``stop``)."""
    root = Path(root)

    def sweep_once() -> None:
        result = sweep_fn(root, max_bytes)
        if result.removed:
            log.info(
                "job caches: %d bytes held, %d files (%d bytes) removed, limit %d",
                result.total_bytes,
                result.removed,
                result.freed_bytes,
                max_bytes,
            )

    return Ticker("cache-sweeper", interval, sweep_once, first_now=True)
