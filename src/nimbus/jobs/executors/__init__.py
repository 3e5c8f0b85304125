"""Executors: where attempts run. One module each; :func:`make_executor` picks one by name.

- ``local``: a fresh ``python`` subprocess per worker (:mod:`.local`).
- ``ray``: each worker a Ray task on a cluster, started by its node's warm agent
  (:mod:`.ray_executor`).
- ``forkserver``: workers forked from a zygote with heavy modules imported (:mod:`.forkserver`);
  with the sandbox, each attempt in a warm sandbox of its own (:mod:`.warm`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nimbus.errors import InvalidInput
from nimbus.jobs.executors.base import Executor
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.warm import WarmSandboxExecutor
from nimbus.jobs.sandbox import NodeSandboxConfig, Sandbox

if TYPE_CHECKING:  # nimbus.jobs.environments imports this package's base module
    from nimbus.jobs.environments import EnvironmentLimits

EXECUTORS = ("local", "forkserver", "ray")
log = logging.getLogger(__name__)


def make_executor(
    name: str,
    jobs_root: Path,
    *,
    preload: Sequence[str] = ("torch",),
    grace_seconds: float = 10.0,
    sandbox: Sandbox | None = None,
    warm: int = 2,
    reuse: bool = True,
    ray_address: str | None = None,
    ray_jobs_dir: Path | None = None,
    lease_seconds: float = 30.0,
    ray_sandbox: NodeSandboxConfig | None = None,
    ray_environments: EnvironmentLimits | None = None,
) -> Executor:
    """The executor called ``name``, running attempts under ``jobs_root`` (each in
    ``sandbox`` when given: see :mod:`nimbus.jobs.sandbox`). ``forkserver`` with the
    sandbox keeps up to ``warm`` warm sandboxes (0: every attempt starts cold), each serving
    attempts of one affinity one after another when ``reuse``. ``ray``
    runs them on the cluster, each in its node's sandbox with ``ray_sandbox``
    (:mod:`.ray_sandbox`), each node building job environments per ``ray_environments``."""
    if name == "local":
        return LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=sandbox)
    if name == "forkserver" and sandbox is not None:
        # One shared zygote's children would share its namespaces and uid: each attempt
        # gets a zygote in a sandbox of its own instead, started ahead for its tenant.
        if warm > 0 and not sandbox.hierarchies:
            log.warning(
                "no writable cgroup hierarchy: attempts start cold, each in a new sandbox "
                "(a warm sandbox's processes could not all be found to kill them)"
            )
        if warm == 0 or not sandbox.hierarchies:
            return LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=sandbox)
        return WarmSandboxExecutor(
            jobs_root,
            sandbox=sandbox,
            size=warm,
            reuse=reuse,
            preload=preload,
            grace_seconds=grace_seconds,
        )
    if name == "ray":
        # Imported here: Ray is an optional extra, and heavy.
        from nimbus.jobs.executors.ray_bridge import shared_bridge

        return shared_bridge(
            ray_address,
            ray_jobs_dir or jobs_root,
            preload=preload,
            grace_seconds=grace_seconds,
            warm=warm > 0,
            lease_seconds=lease_seconds,
            sandbox=ray_sandbox,
            environments=ray_environments,
        )
    if name == "forkserver":
        return ForkServerExecutor(jobs_root, preload=preload, grace_seconds=grace_seconds)
    raise InvalidInput(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")
