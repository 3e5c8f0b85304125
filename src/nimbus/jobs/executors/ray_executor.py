"""The Ray executor: each worker of an attempt a Ray task holding the job's resources,
its process started by the warm agent of the node Ray placed it on (:mod:`.ray_remote`).

Nimbus stays the source of truth: Ray's retries are off (``max_retries=0``), the attempt's
lease is renewed by the scheduler as for any executor, and a worker whose task or node died
ends the attempt as *lost* (requeued by the retry policy, resumed from its checkpoint).
Two ends are Nimbus's own, decided here: an attempt whose work cannot be confirmed (the
head has not answered a listing for a lease) ends *lost*, and so does one still waiting in
Ray's queue when no node that could run it has been alive for a lease (its node left); a
start while the head is silent, or that no node alive within a lease could place, is refused.

Several workers get a placement group (``PACK``, or ``STRICT_SPREAD`` with ``spread``) and
torch.distributed's rendezvous at rank 0's node. Each worker's node goes to the attempt's
log as it starts, and to :meth:`RayExecutor.placement`.

Job environments (``--requirements``) are resolved once by the control plane (the lock
comes with the launch: :mod:`.environment`) and built from that lock by the agent of each
node a worker runs on (:mod:`.ray_remote`), before that worker's process starts: every
node installs the same pins, and none resolves. For several workers, one
task per bundle of the placement group first gets its node the environment, and the
workers (and their rendezvous) start only once every one of those nodes has it: no worker
waits at the rendezvous for another node's build. A failed build ends the attempt
``environment_build_failed`` (not retried).

Isolation: with ``sandbox`` (the default) each worker process runs in Nimbus's sandbox on
its node, made by the node's agent (:mod:`.ray_sandbox`); with None (``job_isolation =
none``), as the Ray node's user, in a session of its own, with the scrubbed environment.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbus.errors import InvalidInput, Unavailable
from nimbus.jobs.domain import ExitReason
from nimbus.jobs.environments import EnvironmentLimits
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus, Handle, OutputSink
from nimbus.jobs.executors.ray_remote import (
    AgentConfig,
    NodeAgent,
    WorkerOrder,
    agent_name,
    master_address,
    run_worker,
)
from nimbus.jobs.ray_cluster import SILENT_SECONDS, RayCluster, worker_demand
from nimbus.jobs.sandbox import NodeSandboxConfig

log = logging.getLogger(__name__)
LOST = ExitStatus(None, None, ExitReason.LOST)


@dataclass
class RayWorker:
    rank: int
    order: WorkerOrder
    stream: Any  # ray's ObjectRefGenerator
    node: tuple[str, str] | None = None  # (node id, address)
    status: ExitStatus | None = None

    @property
    def preparing(self) -> bool:
        return self.order.prepare


@dataclass
class RayHandle:
    attempt_id: str
    launch: AttemptLaunch
    group: Any = None  # the placement group of a multi-worker attempt
    rendezvous: Any = None  # ObjectRef of (address, port) while the group forms
    preparing: list[RayWorker] = field(default_factory=list)  # environments, per bundle
    workers: list[RayWorker] = field(default_factory=list)
    killed_at: float | None = None
    forced: bool = False  # its tasks force-cancelled (the grace after the kill ran out)
    failure: ExitStatus | None = None


class RayExecutor:
    """Runs attempts on ``cluster``; work directories under ``jobs_root`` on its nodes."""

    def __init__(
        self,
        cluster: RayCluster,
        jobs_root: Path,
        *,
        preload: Sequence[str] = ("torch",),
        grace_seconds: float = 10.0,
        warm: bool = True,
        lease_seconds: float = 30.0,
        sandbox: NodeSandboxConfig | None = None,
        environments: EnvironmentLimits | None = None,
    ) -> None:
        import ray

        self.ray, self.cluster = ray, cluster
        self.jobs_root, self.grace_seconds, self.warm = Path(jobs_root), grace_seconds, warm
        self.lease_seconds = lease_seconds  # unconfirmed for this long: lost
        self.agent_config = AgentConfig(
            str(jobs_root),
            tuple(preload),
            grace_seconds,
            warm,
            sandbox,
            environments or EnvironmentLimits(),
        )
        self._task = ray.remote(run_worker)
        self._probe = ray.remote(master_address)
        self._agent_class = ray.remote(NodeAgent)
        self._agents: dict[str, Any] = {}
        self._handles: dict[str, RayHandle] = {}
        self.ensure_agents()

    def ensure_agents(self, *, fresh: bool = True) -> None:
        """An agent on every alive node that has none yet (their fork servers start in
        the background; a worker placed on a node whose agent is starting waits for it)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node in self.cluster.nodes(fresh=fresh):
            if node.node_id in self._agents:
                continue
            self._agents[node.node_id] = self._agent_class.options(
                name=agent_name(self.agent_config.key, node.node_id),
                get_if_exists=True,
                num_cpus=0,
                max_restarts=0,
                max_concurrency=64,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ).remote(self.agent_config)

    # -- the Executor protocol --------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        silent = self.cluster.silent()
        if silent > SILENT_SECONDS:
            raise Unavailable(f"the Ray head has not answered for {silent:.0f} s")
        unplaceable = self.cluster.gone(launch.resources, self.lease_seconds)
        if unplaceable is not None:  # its node left since the submit
            raise InvalidInput(unplaceable)
        if any(node.node_id not in self._agents for node in self.cluster.nodes()):
            self.ensure_agents()  # a node joined
        handle = RayHandle(launch.attempt_id, launch)
        world = launch.resources.workers
        if world == 1:
            handle.workers.append(self._launch_worker(handle, 0, {}))
        else:
            from ray.util.placement_group import placement_group

            bundle = worker_demand(launch.resources)
            strategy = "STRICT_SPREAD" if launch.resources.spread else "PACK"
            handle.group = placement_group([dict(bundle) for _ in range(world)], strategy)
            if launch.requirements:  # every node gets the environment first
                handle.preparing = [
                    self._launch_worker(handle, rank, {}, prepare=True) for rank in range(world)
                ]
            else:
                handle.rendezvous = self._probe_rendezvous(handle.group)
        self._handles[launch.attempt_id] = handle
        return handle

    def _probe_rendezvous(self, group: Any) -> Any:
        """rank 0's address and a free port there, from a task in its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return self._probe.options(
            num_cpus=0,
            max_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
        ).remote()

    def _launch_worker(
        self, handle: RayHandle, rank: int, env: dict[str, str], *, prepare: bool = False
    ) -> RayWorker:
        """The task of worker ``rank``; with ``prepare`` (``env`` unused: no process), the
        task in its bundle that gets its node the attempt's environment."""
        launch, res = handle.launch, handle.launch.resources
        order = WorkerOrder(
            job_id=launch.job_id,
            attempt_id=launch.attempt_id,
            attempt_number=launch.attempt_number,
            token=launch.token,
            program=launch.program,
            workdir=str(self.jobs_root / launch.job_id / launch.attempt_id),
            nimbus_url=launch.nimbus_url,
            cpus=res.cpus,
            gpus=res.gpus,
            memory_bytes=res.memory_bytes,
            rank=rank,
            env={**launch.extra_env, **env},
            world=res.workers,
            agent_key=self.agent_config.key,
            requirements=launch.requirements,
            lock=launch.lock,
            prepare=prepare,
            # A worker of several starts cold in a sandbox of its own (.ray_sandbox).
            affinity=launch.affinity if res.workers == 1 else None,
        )
        options: dict[str, Any] = {"max_retries": 0, "retry_exceptions": False}
        if prepare:  # within its bundle, which holds the worker's resources
            options["num_cpus"] = 0
        else:
            options.update(num_cpus=res.cpus, num_gpus=res.gpus, resources=dict(res.custom))
            if res.memory_bytes:
                options["memory"] = res.memory_bytes
        if handle.group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(handle.group, rank)
        return RayWorker(rank, order, self._task.options(**options).remote(order))

    def poll(self, handle: Handle) -> ExitStatus | None:
        if any(node.node_id not in self._agents for node in self.cluster.nodes()):
            self.ensure_agents(fresh=False)  # a node joined: its workers wait for an agent
        group = self._group(handle)
        if group.preparing and group.rendezvous is None and not self._prepared(group):
            if any(task.status is None for task in group.preparing):
                self._escalate(group)
                return self._still_running(group)
            return self._end(group)
        if group.rendezvous is not None and not group.workers and not self._rendezvous(group):
            return self._still_running(group) if group.failure is None else self._end(group)
        for worker in group.workers:
            if worker.status is None:
                worker.status = self._drain(group, worker)
                failed = worker.status is not None and not worker.status.ok
                if failed and group.failure is None:
                    group.failure = worker.status
                    self.kill(group)  # the others cannot finish without it
        self._escalate(group)
        if any(worker.status is None for worker in group.workers):
            return self._still_running(group)
        return self._end(group)

    def _escalate(self, group: RayHandle) -> None:
        """Force-cancel the tasks of a killed attempt still running after the grace."""
        killed_at = group.killed_at
        if (
            killed_at is not None
            and time.monotonic() > killed_at + self.grace_seconds
            and not group.forced
        ):
            group.forced = True
            self._cancel(_unfinished(group), force=True)

    def _prepared(self, group: RayHandle) -> bool:
        """Whether every worker's node has the attempt's environment: then the rendezvous
        is probed (its port picked now, not before a long build) and the workers follow.
        A failed build ends the others (the attempt fails with it)."""
        for task in group.preparing:
            if task.status is None:
                task.status = self._drain(group, task)
                if task.status is not None and not task.status.ok and group.failure is None:
                    group.failure = task.status
                    self.kill(group)
        if any(task.status is None for task in group.preparing):
            return False
        if group.failure is None and group.killed_at is not None:
            group.failure = ExitStatus(None, signal.SIGTERM)
        if group.failure is not None:
            return False
        group.rendezvous = self._probe_rendezvous(group.group)
        return True

    def _still_running(self, group: RayHandle) -> ExitStatus | None:
        """None, or LOST when :meth:`_lost` gives it up (then ended here)."""
        lost = self._lost(group)
        if lost is None:
            return None
        log.warning("attempt %s lost: %s", group.attempt_id, lost)
        _emit(group.launch.output, f"[nimbus] lost: {lost}\n")
        return self._abandon(group)

    def _lost(self, group: RayHandle) -> str | None:
        """Why a running attempt is given up as lost, if it is: its work cannot be
        confirmed (the head silent for a lease), or it waits for a node and no node that
        could run it has been alive for a lease."""
        silent = self.cluster.silent()
        if silent > self.lease_seconds:
            return (
                f"the Ray head has not answered for {silent:.0f} s (the lease is "
                f"{self.lease_seconds:g} s): its work cannot be confirmed"
            )
        waiting = not group.workers or any(w.node is None for w in group.workers)
        if not waiting:
            return None
        unplaceable = self.cluster.gone(group.launch.resources, self.lease_seconds)
        if unplaceable is None:
            return None
        return f"it waited for a node, and {unplaceable[0].lower()}{unplaceable[1:]}"

    def _abandon(self, group: RayHandle) -> ExitStatus:
        """End a lost attempt now: its tasks cancelled (their processes SIGTERMed by their
        agents when the cancel reaches them; fenced by the job API in any case), its
        placement group removed, in the background (with the head down both wait)."""
        self._handles.pop(group.attempt_id, None)
        self._cancel(_unfinished(group), force=False, group=group.group)
        return LOST

    def _cancel(self, streams: list[Any], *, force: bool, group: Any = None) -> None:
        """Cancel tasks (and remove a placement group) off the caller's thread: with the
        head down either call can wait for it (seen: a cancel holding up the driver's
        answers, so the control plane heard of a loss only a minute later)."""
        if streams or group is not None:
            threading.Thread(
                target=self._cancel_now, args=(streams, force, group), daemon=True
            ).start()

    def _cancel_now(self, streams: list[Any], force: bool, group: Any) -> None:
        for stream in streams:
            try:
                self.ray.cancel(stream, force=force)
            except Exception:  # its worker or node already gone
                log.debug("could not cancel a task", exc_info=True)
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(group)

    def _rendezvous(self, group: RayHandle) -> bool:
        """Launch the workers once rank 0's address is known (the group placed)."""
        ready, _ = self.ray.wait([group.rendezvous], timeout=0)
        if group.killed_at is not None:
            group.failure = group.failure or ExitStatus(None, signal.SIGTERM)
            return False
        if not ready:
            return False
        try:
            address, port = self.ray.get(group.rendezvous)
        except self.ray.exceptions.RayError:
            group.failure = LOST
            return False
        world = group.launch.resources.workers
        for rank in range(world):
            env = {
                "RANK": str(rank),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": address,
                "MASTER_PORT": str(port),
            }
            group.workers.append(self._launch_worker(group, rank, env))
        return True

    def _drain(self, group: RayHandle, worker: RayWorker) -> ExitStatus | None:
        """Hand the worker's new output to the attempt's sink; its status once it ended."""
        sink = group.launch.output
        prefix = f"[{worker.rank}] " if group.launch.resources.workers > 1 else ""
        while True:
            ready, _ = self.ray.wait([worker.stream], timeout=0)
            if not ready:
                return None
            try:
                item = self.ray.get(next(worker.stream))
            except StopIteration:
                return LOST  # ended without its exit: cannot happen unless it crashed
            except self.ray.exceptions.TaskCancelledError:
                return ExitStatus(None, signal.SIGTERM) if group.killed_at else LOST
            except self.ray.exceptions.RayError as exc:
                log.warning("attempt %s worker %d lost: %s", group.attempt_id, worker.rank, exc)
                _emit(sink, f"{prefix}[nimbus] lost: {type(exc).__name__}\n")
                return LOST
            if item[0] == "node" and worker.preparing:
                _emit(
                    sink,
                    f"{prefix}[nimbus] environment of worker {worker.rank} on Ray node "
                    f"{item[1]} ({item[2]})\n",
                )
            elif item[0] == "node":
                worker.node = (item[1], item[2])
                if group.launch.placed is not None:
                    try:
                        group.launch.placed(worker.rank, item[1], item[2])
                    except Exception:  # a record, not the job: it goes on
                        log.exception("could not record where a worker runs")
                _emit(
                    sink,
                    f"{prefix}[nimbus] worker {worker.rank} on Ray node {item[1]} ({item[2]})\n",
                )
            elif item[0] == "output":
                _emit(sink, "".join(prefix + line for line in item[1].splitlines(True)))
            else:
                status: ExitStatus = item[1]
                return status

    def _end(self, group: RayHandle) -> ExitStatus:
        self._handles.pop(group.attempt_id, None)
        if group.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group.group)
        return group.failure or ExitStatus(0)

    def placement(self, handle: Handle) -> list[tuple[int, str, str] | None]:
        """Per rank: (rank, node id, node address) once placed."""
        return [
            (w.rank, *w.node) if w.node is not None else None for w in self._group(handle).workers
        ]

    def kill(self, handle: Handle) -> None:
        group = self._group(handle)
        if group.killed_at is not None:
            return
        group.killed_at = time.monotonic()
        self._cancel(_unfinished(group), force=False)

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        # The tasks of an earlier run of this control plane (an earlier driver) died with
        # it: Ray ends a driver's tasks when it goes. Their attempts are requeued by the
        # scheduler's recovery (abandon_owned).
        return []

    def close(self) -> None:
        for group in list(self._handles.values()):
            for stream in _unfinished(group):
                self.ray.cancel(stream, force=True)
            self._end(group)

    def _group(self, handle: Handle) -> RayHandle:
        if not isinstance(handle, RayHandle):
            raise TypeError(f"not a handle of this executor: {handle!r}")
        return handle


def _unfinished(group: RayHandle) -> list[Any]:
    """The streams of the attempt's tasks (environments' and workers') still running."""
    return [task.stream for task in [*group.preparing, *group.workers] if task.status is None]


def _emit(sink: OutputSink | None, text: str) -> None:
    if sink is not None and text:
        try:
            sink(text)
        except Exception:  # the job's output is best effort
            log.exception("lost job output")
