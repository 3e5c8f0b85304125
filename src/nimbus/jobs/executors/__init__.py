"""Executors: where attempts run. One module each; :func:`make_executor` picks one by name.

- ``local``: a fresh ``python`` subprocess per worker (:mod:`.local`).
- ``forkserver``: workers forked from a zygote with heavy modules imported (:mod:`.forkserver`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from nimbus.errors import InvalidInput
from nimbus.jobs.executors.base import Executor
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.sandbox import Sandbox

EXECUTORS = ("local", "forkserver")
log = logging.getLogger(__name__)


def make_executor(
    name: str,
    jobs_root: Path,
    *,
    preload: Sequence[str] = ("torch",),
    grace_seconds: float = 10.0,
    sandbox: Sandbox | None = None,
) -> Executor:
    """The executor called ``name``, running attempts under ``jobs_root`` (each in
    ``sandbox`` when given: see :mod:`nimbus.jobs.sandbox`)."""
    if name == "local":
        return LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=sandbox)
    if name == "forkserver" and sandbox is not None:
        # A zygote's children share its namespaces and were forked as root: a sandbox per
        # attempt needs a fresh bwrap, so the warm start (torch imported) is given up.
        log.warning(
            "executor 'forkserver' with the sandbox: attempts start cold, each in its own "
            "bubblewrap sandbox (the zygote's warm start would share one sandbox)"
        )
        return LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=sandbox)
    if name == "forkserver":
        return ForkServerExecutor(jobs_root, preload=preload, grace_seconds=grace_seconds)
    raise InvalidInput(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
