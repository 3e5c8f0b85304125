"""Filling a tenant's download cache from the storage service, on the node, before a job
needs it: the job's inputs come through presigned GETs, not through the control plane.

A sandboxed job has no network, so its own downloads go through the job API socket; this
runs outside the sandbox, on the node that starts the attempt. :func:`claim` takes the
cache's lock file of every input not yet cached (the same ``<blob>.lock`` that
:meth:`JobApiClient.blob <nimbus.runtime.job_api.JobApiClient.blob>` takes), before the job
starts; :func:`fill` then downloads each one, checks its SHA-256 and size, and renames it
into place read-only (0444) before it lets go of the lock. A job that asks for a blob
meanwhile waits on that lock, then finds the file cached. A failed fetch lets go of the
lock with nothing in place: the job downloads that blob through the job API, as it would
without this.

The cache belongs to the tenant's jobs too (group-writable when sandboxed), and a job may
swap any directory in it for a symlink: every step here walks from the tenant directory
with directory file descriptors opened ``O_NOFOLLOW`` and creates names relative to them
(``O_EXCL``), so a root server cannot be steered into writing anywhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from nimbus.ranges import WRITE_SIZE

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CACHED_MODE = 0o444  # as JobApiClient leaves a downloaded blob
CHUNK = WRITE_SIZE  # written to the cache this much at a time (nimbus.ranges)


@dataclass(frozen=True)
class Prefetch:
    """Where a node learns a job's inputs (blob key -> size) and their presigned URLs."""

    inputs: Callable[[str], Mapping[str, int]]  # by job id
    url_for: Callable[[str], str | None]  # by blob key; None: no direct transfers
    workers: int = 4  # inputs fetched at a time, per attempt


@dataclass
class Claim:
    """One input being fetched: its key, size, the held lock and its directory."""

    key: str
    size: int
    dir_fd: int
    lock_fd: int

    @property
    def digest(self) -> str:
        return self.key.rsplit("/", 1)[1]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        os.close(self.lock_fd)
        os.close(self.dir_fd)


def _open_dir(parent_fd: int, name: str, mode: int) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    info = os.fstat(fd)
    if info.st_uid == os.geteuid():
        os.fchmod(fd, mode)  # as the tenant directory: the job's group may write too
    return fd


def _is_cached(dir_fd: int, claim_digest: str) -> bool:
    try:
        fd = os.open(claim_digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return hashlib.file_digest(f, "sha256").hexdigest() == claim_digest


def claim(cache_dir: Path, inputs: Mapping[str, int]) -> list[Claim]:
    """Take the lock of every input of ``inputs`` (key -> size) not already cached."""
    claims: list[Claim] = []
    root = os.open(cache_dir, _DIR_FLAGS)
    try:
        mode = stat.S_IMODE(os.fstat(root).st_mode)
        for key, size in sorted(inputs.items()):
            match = _KEY_RE.match(key)
            if match is None or not match.group(2).startswith(match.group(1)):
                continue
            top = _open_dir(root, "sha256", mode)
            try:
                dir_fd = _open_dir(top, match.group(1), mode)
            finally:
                os.close(top)
            digest = match.group(2)
            lock_fd = os.open(
                f"{digest}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o660,
                dir_fd=dir_fd,
            )
            with contextlib.suppress(OSError):
                os.fchmod(lock_fd, 0o660)  # the job's uid opens it too ("a+b")
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            held = Claim(key, size, dir_fd, lock_fd)
            if _is_cached(dir_fd, digest):
                held.release()
                continue
            claims.append(held)
    finally:
        os.close(root)
    return claims


def fill(claims: list[Claim], url_for: Callable[[str], str | None], workers: int = 4) -> int:
    """Fetch every claimed input, at most ``workers`` at a time, releasing each lock as
    its input arrives (or fails); returns how many arrived."""
    if not claims:
        return 0
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    with (
        httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0), limits=limits) as http,
        ThreadPoolExecutor(min(workers, len(claims)), thread_name_prefix="prefetch") as pool,
    ):
        return sum(pool.map(lambda held: _fill_one(http, held, url_for), claims))


def _fill_one(http: httpx.Client, held: Claim, url_for: Callable[[str], str | None]) -> int:
    try:
        url = url_for(held.key)
        if url is None:
            return 0
        _fetch(http, held, url)
        log.info("prefetched %s (%d bytes) from the storage service", held.key, held.size)
        return 1
    except Exception:
        log.warning("prefetching %s failed; the job fetches it itself", held.key, exc_info=True)
        return 0
    finally:
        held.release()


def _fetch(http: httpx.Client, held: Claim, url: str) -> None:
    tmp = f".{held.digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=held.dir_fd,
    )
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, http.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), CACHED_MODE)
            os.fsync(out.fileno())
        if digest.hexdigest() != held.digest or size != held.size:
            raise ValueError(f"blob {held.key} arrived with another content ({size} bytes)")
        os.rename(tmp, held.digest, src_dir_fd=held.dir_fd, dst_dir_fd=held.dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=held.dir_fd)
