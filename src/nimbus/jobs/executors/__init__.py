"""Executors: where attempts run. One module each; :func:`make_executor` picks one by name.

- ``local``: a fresh ``python`` subprocess per worker (:mod:`.local`).
- ``forkserver``: workers forked from a zygote with heavy modules imported (:mod:`.forkserver`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nimbus.errors import InvalidInput
from nimbus.jobs.executors.base import Executor
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.isolation import JobUser

EXECUTORS = ("local", "forkserver")


def make_executor(
    name: str,
    jobs_root: Path,
    *,
    preload: Sequence[str] = ("torch",),
    grace_seconds: float = 10.0,
    run_as: JobUser | None = None,
) -> Executor:
    """The executor called ``name``, running attempts under ``jobs_root`` (as ``run_as``
    when given: see :mod:`nimbus.jobs.isolation`)."""
    if name == "local":
        return LocalExecutor(jobs_root, grace_seconds=grace_seconds, run_as=run_as)
    if name == "forkserver":
        return ForkServerExecutor(
            jobs_root, preload=preload, grace_seconds=grace_seconds, run_as=run_as
        )
    raise InvalidInput(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
