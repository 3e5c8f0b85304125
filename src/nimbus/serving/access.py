"""Who may call a replica: the SHA-256 hashes of the tokens allowed, checked locally.

The control plane hands them over without the replica ever calling it back: in the
environment variable ``NIMBUS_REPLICA_TOKEN_HASHES`` (never in argv, which any local user can
read), and/or in a file only its owner can read (mode 0600), re-read when it changes, which is
how a revoked token stops working without a restart. One hash per line (or separated by commas
or spaces); ``#`` starts a comment. With neither, nothing is allowed: auth fails closed.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nimbus.errors import InvalidInput
from nimbus.security import hash_token

TOKEN_HASHES_ENV = "NIMBUS_REPLICA_TOKEN_HASHES"
RECHECK_SECONDS = 0.5
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger(__name__)


def parse_hashes(text: str) -> frozenset[str]:
    """Hex SHA-256 digests from text; anything else is an InvalidInput."""
    hashes = set()
    for line in text.splitlines():
        for item in line.split("#", 1)[0].replace(",", " ").split():
            item = item.lower()
            if not _HASH_RE.match(item):
                raise InvalidInput("token hashes must be hex SHA-256 digests (64 characters)")
            hashes.add(item)
    return frozenset(hashes)


def read_hashes_file(path: Path) -> frozenset[str]:
    """The hashes in ``path``, refused unless it is a regular file of ours, mode 0600 or
    stricter."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"token file {path} is not a regular file")
        if info.st_mode & 0o077 or info.st_uid != os.geteuid():
            raise InvalidInput(f"token file {path} must be owned by this user with mode 0600")
        return parse_hashes(handle.read())


class TokenHashes:
    """The ``auth`` callable of :func:`nimbus.serving.app.create_app`: token -> allowed?

    ``file`` is looked at (one ``stat``) at most every ``recheck`` seconds and re-read when
    its identity, size or modification time changed; a file that turns unreadable or unsafe
    allows nothing until it is fixed.
    """

    def __init__(
        self,
        hashes: Iterable[str] = (),
        file: Path | None = None,
        *,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fixed = frozenset(hashes)
        self._file = file
        self._recheck = recheck
        self._clock = clock
        self._file_hashes: frozenset[str] = frozenset()
        self._seen: tuple[int, int, int, int] | None = None
        self._next_check = 0.0
        if file is not None:
            self._refresh()

    @classmethod
    def from_environment(cls, environ: dict[str, str], file: Path | None = None) -> TokenHashes:
        """Hashes from ``NIMBUS_REPLICA_TOKEN_HASHES`` plus those of ``file``."""
        return cls(parse_hashes(environ.get(TOKEN_HASHES_ENV, "")), file)

    def __call__(self, token: str) -> bool:
        digest = hash_token(token)
        if digest in self._fixed:
            return True
        if self._file is None:
            return False
        if self._clock() >= self._next_check:
            self._refresh()
        return digest in self._file_hashes

    def _refresh(self) -> None:
        assert self._file is not None
        self._next_check = self._clock() + self._recheck
        try:
            info = os.stat(self._file)
            seen = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode)
            if seen == self._seen:
                return
            self._file_hashes = read_hashes_file(self._file)
            self._seen = seen
        except (OSError, InvalidInput) as exc:
            if self._seen is not None or self._file_hashes:
                log.warning("token file %s unusable, allowing no token: %s", self._file, exc)
            self._file_hashes, self._seen = frozenset(), None
