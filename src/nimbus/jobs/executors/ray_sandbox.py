"""The sandbox on a Ray node: attempts of the ``ray`` executor isolated as local ones are.

With ``job_isolation = sandbox`` (the default), the control plane sends each node's agent
(:class:`~.ray_remote.NodeAgent`) a :class:`NodeSandboxConfig`, and the agent makes the
node's sandbox itself (:meth:`NodeSandboxes.start`): the same bubblewrap sandbox, tried
for real, with the node's interpreter and the node's cgroups. Every worker process then
runs under a uid of its own from the job range, in its own PID, mount, IPC and UTS
namespaces, in a cgroup with the job's ``--cpus``/``--memory``, seeing only the system,
the interpreter, its work directory and a private ``/tmp``: nothing of Ray's session
directory, its token, the Ray processes or other attempts. Its environment is the scrubbed
one of every attempt (no ``RAY_*``).

The network:

- a job of **one worker** has a network namespace of its own, only a loopback in it (it
  cannot reach Ray's daemons, the node's services or the LAN); its job API is reached
  through the node's relay (:mod:`.job_api_relay`), a unix socket bound into the sandbox
  that passes the control plane's job API on, and nothing else;
- a worker of a job of **several workers** must reach its peers on other nodes (gloo,
  ``MASTER_ADDR``): it shares the node's network (``host_network``). It still sees no
  Ray file or process and holds no Ray token: Ray's token authentication is what keeps it
  from submitting work to the cluster.

Warm start: single-worker attempts start in a warm sandbox (:mod:`.warm`), one kept ready
per node (``warm``), or in the one the node's last attempt of the same affinity ended in
(``reuse``; the affinity comes with the worker's order); a worker of several starts cold in
a fresh sandbox. All of a node's attempts share one tenant gid (a Ray node keeps no
tenant's download cache; the affinity names the tenant).

Job environments (``--requirements``): the node's agent builds them in this sandbox, as a
job uid (:mod:`nimbus.jobs.environments`), into a directory of the node's own below the
jobs root, bound read-only into every attempt's sandbox.

Uids: several Ray nodes may run on one machine; each uid is also locked in a file under
the jobs root (:class:`LockedUidPool`), so two agents there never give out the same one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nimbus.jobs.executors.base import Executor
from nimbus.jobs.executors.job_api_relay import JobApiRelay
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.warm import WarmSandboxExecutor
from nimbus.jobs.isolation import blocked, prepare_root, resolve_isolation
from nimbus.jobs.sandbox import NodeSandboxConfig, Sandbox, UidPool

__all__ = ["LockedUidPool", "NodeSandboxConfig", "NodeSandboxes", "SandboxRefused"]
UIDS_DIR = ".uids"  # below the jobs root: one lock file per uid in use on this machine


class SandboxRefused(Exception):
    """This node cannot sandbox attempts; the message says why and how to fix it."""


class LockedUidPool(UidPool):
    """A :class:`UidPool` whose uids are also locked (``flock``) in files of
    ``directory``: pools of several processes on one machine never hand out the same uid."""

    def __init__(self, first: int, count: int, directory: Path) -> None:
        super().__init__(first, count)
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._files: dict[int, int] = {}
        self._files_lock = threading.Lock()

    def acquire(self) -> int:
        taken_elsewhere: list[int] = []
        try:
            while True:  # ends: the pool raises once every uid is taken here or elsewhere
                uid = super().acquire()
                fd = os.open(self.directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    taken_elsewhere.append(uid)
                    continue
                with self._files_lock:
                    self._files[uid] = fd
                return uid
        finally:
            for uid in taken_elsewhere:
                super().release(uid)

    def release(self, uid: int) -> None:
        with self._files_lock:
            fd = self._files.pop(uid, None)
        if fd is not None:
            os.close(fd)  # releases the lock
        super().release(uid)


@dataclass
class NodeSandboxes:
    """A node's sandboxed executors: ``isolated`` for single-worker attempts (a network
    namespace of their own; warm), ``host`` for the workers of multi-worker attempts (the
    node's network; cold); and the job API ``relay`` both reach the control plane by."""

    sandbox: Sandbox
    isolated: Executor
    host: Executor
    relay: JobApiRelay

    @classmethod
    def start(
        cls,
        config: NodeSandboxConfig,
        jobs_root: Path,
        node_id: str,
        *,
        hidden: Path,
        preload: Sequence[str],
        grace_seconds: float,
        environments: Path | None = None,
    ) -> NodeSandboxes:
        """The node's sandbox, tried for real; :class:`SandboxRefused` saying why when it
        cannot be made. ``hidden`` (Ray's temporary directory) is kept out of view;
        ``environments`` (the node's built job environments) is bound read-only into
        every sandbox."""
        name = node_id[:16]
        prepare_root(jobs_root, True)
        gid = config.uid_first + config.uid_count  # the attempts' (SandboxSettings.tenant_gid)
        if note := blocked(jobs_root, config.uid_first, gid):
            raise SandboxRefused(
                f"job uids cannot reach the jobs directory {jobs_root} on this Ray node: "
                f"{note}. Let other users pass (chmod o+x) or set NIMBUS_RAY_JOBS_DIR elsewhere"
            )
        relay_dir = jobs_root / f".job-api-{name}"
        isolation = resolve_isolation(
            "sandbox",
            hidden,
            instance=f"ray-{name}",
            uid_first=config.uid_first,
            uid_count=config.uid_count,
            disk_limit_bytes=config.disk_limit_bytes,
            pids_per_worker=config.pids_per_worker,
            keep_failed_seconds=config.keep_failed_seconds,
            job_api_dir=relay_dir,
            environments=environments,
            in_home=False,
        )
        sandbox = isolation.sandbox
        if sandbox is None:
            raise SandboxRefused(f"this Ray node cannot sandbox attempts: {isolation.refused}")
        for leftover in sandbox.leftovers():  # an earlier agent of this node's
            sandbox.kill_leftover(leftover)
        sandbox.uids = LockedUidPool(config.uid_first, config.uid_count, jobs_root / UIDS_DIR)
        host = Sandbox(
            dataclasses.replace(sandbox.settings, host_network=True),
            sandbox.hierarchies,
            sandbox.degraded,
        )
        host.uids = sandbox.uids  # one pool: the two never give out one uid twice
        isolated: Executor
        if config.warm > 0 and sandbox.hierarchies:
            warm = WarmSandboxExecutor(
                jobs_root,
                sandbox=sandbox,
                size=config.warm,
                reuse=config.reuse,
                preload=preload,
                grace_seconds=grace_seconds,
                warm_dir=f".warm-{name}",
            )
            warm.expect(None)  # Ray attempts share one tenant gid: ready for the first
            isolated = warm
        else:
            isolated = LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=sandbox)
        cold = LocalExecutor(jobs_root, grace_seconds=grace_seconds, sandbox=host)
        return cls(sandbox, isolated, cold, JobApiRelay(relay_dir))

    def executor_for(self, world: int) -> Executor:
        """Where a worker of an attempt of ``world`` workers runs."""
        return self.isolated if world == 1 else self.host

    def close(self) -> None:
        self.isolated.close()
        self.host.close()
        self.relay.close()
