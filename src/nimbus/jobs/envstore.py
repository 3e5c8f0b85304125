"""The built job environments of one node, on disk (:mod:`nimbus.jobs.environments`
builds them): ``root/<key>``, root's and read-only to jobs, the least recently used
removed past a size, and the take-over of what a build made.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from nimbus.jobs.sandbox import disk_usage

BUILDS_DIR = ".build"
LOCKS_DIR = ".locks"


class BuildFailed(Exception):
    """The environment could not be built; the message says why (uv's own words)."""


class EnvironmentStore:
    """The built environments of this node: ``root/<key>``, root's, read-only to jobs."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        for directory, mode in ((self.root, 0o711), (self.root / BUILDS_DIR, 0o711)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(directory, mode)  # listing it would tell which environments exist
        (self.root / LOCKS_DIR).mkdir(mode=0o700, exist_ok=True)

    def purge_builds(self, older_than: float) -> list[Path]:
        """Remove what builds that ended with their server left in ``.build`` (untouched
        for ``older_than`` seconds: longer than any build may run)."""
        cutoff = time.time() - older_than
        removed = []
        for entry in (self.root / BUILDS_DIR).iterdir():
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed

    def path(self, key: str) -> Path:
        return self.root / key

    def ready(self, key: str) -> bool:
        return self.path(key).is_dir()

    def touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path(key))

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the key's build lock (another process building it waits here)."""
        with open(self.root / LOCKS_DIR / f"{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def keys(self) -> list[str]:
        return [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        ]

    def sizes(self) -> dict[str, int]:
        """Bytes each environment takes (a walk of every one: not under a lock)."""
        return {key: disk_usage(self.path(key))[0] for key in self.keys()}

    def victims(self, held: Sequence[str], sizes: dict[str, int] | None = None) -> list[str]:
        """The environments to remove for the rest to fit ``max_bytes``: the least recently
        used first, never one that ``held`` names (running attempts use them)."""
        sizes = self.sizes() if sizes is None else sizes
        total = sum(sizes.values())
        chosen = []
        for key in lru_order(sizes, {k: self._used_at(k) for k in sizes}):
            if total <= self.max_bytes:
                break
            if key in held:
                continue
            chosen.append(key)
            total -= sizes[key]
        return chosen

    def remove(self, key: str) -> None:
        """Out of its place at once (a rename), then deleted."""
        trash = self.root / BUILDS_DIR / f"removed-{key}-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(key), trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _used_at(self, key: str) -> float:
        try:
            return self.path(key).stat().st_mtime
        except OSError:
            return 0.0


def lru_order(sizes: dict[str, int], used_at: dict[str, float]) -> list[str]:
    """Keys from the least recently used to the most (ties: the larger first)."""
    return sorted(sizes, key=lambda k: (used_at.get(k, 0.0), -sizes[k], k))


def take_over(target: Path, builder_uid: int) -> None:
    """Make a built environment the server's: root-owned, read-only to jobs (0755 / 0644,
    executables 0755). Anything but regular files, directories and symlinks, or not made
    by ``builder_uid``, or hard-linked, fails the build (it could be a file of someone
    else's, linked in)."""
    me, group = os.geteuid(), os.getegid()
    for top, dirs, files in os.walk(target):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise BuildFailed(f"the build left a special file: {path}")
            if info.st_uid != builder_uid or (kind == stat.S_IFREG and info.st_nlink > 1):
                raise BuildFailed(f"the build left a file it did not make: {path}")
            os.lchown(path, me, group)
            if kind == stat.S_IFLNK:
                continue
            executable = kind == stat.S_IFDIR or info.st_mode & 0o100
            os.chmod(path, 0o755 if executable else 0o644)
    os.lchown(target, me, group)
    os.chmod(target, 0o755)
