"""A job environment's lock: the ``NAME==VERSION`` pins its requirements resolved to.

A job's requirements are resolved once (``uv pip compile`` over the platform's packages,
in the sandbox as a job uid: :mod:`nimbus.jobs.envbuild`), and the lock is recorded with
the job: its retries, and every Ray node that runs one of its workers, install exactly
those pins and never resolve again. The environment is named by the lock's hash with the
platform (:func:`~nimbus.jobs.requirements.environment_key`), so two lists that resolve
alike share one environment.

:class:`ResolvedLocks` is the node's requested→lock map: a list asked for again (on the
same platform) within its time to live gets the lock it resolved to, without a resolve,
so a cached environment starts without running uv. Past the TTL the list is resolved
again: an unpinned requirement follows its index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from nimbus.jobs.requirements import request_key
from nimbus.system import write_private

Lock = tuple[str, ...]
MAP_DIR = ".resolved"  # below the node's environments: the requested→lock map


class BadLock(ValueError):
    """A lock line that is not an exact ``NAME==VERSION`` pin."""


def pin_of(line: str) -> str:
    """``line`` if it pins one exact version of a package from the index (optionally with
    extras or a marker); raises :class:`BadLock` otherwise."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        raise BadLock(f"not a pin: {line!r}") from None
    specs = list(requirement.specifier)
    if requirement.url is not None or len(specs) != 1 or specs[0].operator != "==":
        raise BadLock(f"not a NAME==VERSION pin: {line!r}")
    return line.strip()


def parse_lock(lines: Iterable[str]) -> Lock:
    """The lock of a resolve's output (uv's ``-o`` file, or a recorded lock): its pins,
    sorted; blank and comment lines dropped."""
    pins = {pin_of(text) for line in lines if (text := line.split("#", 1)[0].strip())}
    return tuple(sorted(pins))


class ResolvedLocks:
    """The requested→lock map of one node: ``root/<request key>.json`` per list resolved
    here, trusted for ``ttl`` seconds after its resolve. Written atomically (a rename);
    the directory is the server's only (0700), each file too (0600)."""

    def __init__(self, root: Path, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.root, self.ttl, self.clock = Path(root), ttl, clock
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, requirements: Sequence[str], platform: Sequence[str]) -> Path:
        return self.root / f"{request_key(requirements, platform)}.json"

    def get(
        self, requirements: Sequence[str], platform: Sequence[str]
    ) -> tuple[Lock, float] | None:
        """The lock this list resolved to here and its age in seconds, if younger than the
        TTL; None otherwise (never resolved, expired, unreadable)."""
        try:
            entry = json.loads(self._path(requirements, platform).read_text())
            age = self.clock() - float(entry["resolved_at"])
            lock = parse_lock(entry["lock"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if entry.get("requirements") != list(requirements) or not 0 <= age < self.ttl:
            return None
        return lock, age

    def put(self, requirements: Sequence[str], platform: Sequence[str], lock: Lock) -> None:
        entry = {"requirements": list(requirements), "lock": list(lock)}
        write_private(
            self._path(requirements, platform),
            json.dumps({**entry, "resolved_at": self.clock()}),
        )
