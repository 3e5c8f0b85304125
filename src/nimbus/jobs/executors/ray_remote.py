"""What runs inside the Ray cluster for the ``ray`` executor (:mod:`.ray_executor`).

- :class:`NodeAgent`: one actor per node (no resources of its own), holding a fork server
  whose zygote imported torch and the runtime: the warm pool of that node. Attempts'
  processes are its zygote's children, run exactly as the fork-server executor runs them
  on one machine (scrubbed environment, own session, SIGTERM then SIGKILL).
- :func:`run_worker`: one worker of an attempt, a Ray task holding the job's resources
  (its CPUs, GPUs, memory and custom resources are what Ray places): it has its node's
  agent start the worker process, then streams the process's output and, last, its exit.
  Cancelling the task (the executor's kill) kills the process; the task's death (its node
  died) leaves the process to the agent's death or to fencing: a process whose attempt was
  given up is refused by the job API (409) and exits.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbus.jobs.domain import Resources
from nimbus.jobs.executors.base import AttemptLaunch, Executor, Handle, Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.system import free_port

POLL_SECONDS = 0.1
AGENT_PREFIX = "nimbus-agent-"
AGENT_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class WorkerOrder:
    """One worker of an attempt, as the executor sends it to the cluster."""

    job_id: str
    attempt_id: str
    attempt_number: int
    token: str
    program: Program
    workdir: str
    nimbus_url: str
    cpus: float
    gpus: int
    memory_bytes: int
    rank: int = 0
    env: dict[str, str] = field(default_factory=dict)  # RANK, MASTER_ADDR... when several


@dataclass(frozen=True)
class AgentConfig:
    jobs_root: str
    preload: tuple[str, ...]
    grace_seconds: float
    warm: bool = True  # fork attempts from a zygote with the preload imported; else cold


class _Output:
    """Output of one worker process, kept until the task takes it."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)

    def take(self) -> str:
        with self._lock:
            text, self._parts = "".join(self._parts), []
        return text


class NodeAgent:
    """The warm pool of one node: a fork server started at creation (falls back to fresh
    processes if it cannot start). Its methods are called from several threads."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        root = Path(config.jobs_root)
        warm: Executor | None = None
        if config.warm:
            with contextlib.suppress(Exception):  # no fork server: attempts start cold
                warm = ForkServerExecutor(
                    root, preload=config.preload, grace_seconds=config.grace_seconds
                )
        self._executor: Executor = warm or LocalExecutor(root, grace_seconds=config.grace_seconds)
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Handle, _Output]] = {}
        self._killed: set[str] = set()  # polled here until they end (SIGKILL after grace)
        threading.Thread(target=self._reap_killed, name="reap-killed", daemon=True).start()

    def ready(self) -> str:
        return type(self._executor).__name__

    def start(self, order: WorkerOrder, cuda_devices: str | None) -> None:
        env = dict(order.env)
        if cuda_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_devices  # the GPUs Ray gave the task
        out = _Output()
        launch = AttemptLaunch(
            job_id=order.job_id,
            attempt_id=order.attempt_id,
            attempt_number=order.attempt_number,
            token=order.token,
            program=order.program,
            workdir=Path(order.workdir),
            nimbus_url=order.nimbus_url,
            resources=Resources(order.cpus, order.gpus, order.memory_bytes),
            extra_env=env,
            output=out.add,
        )
        key = _key(order)
        with self._lock:
            handle = self._executor.start(launch)
            self._running[key] = (handle, out)

    def poll(self, order: WorkerOrder) -> tuple[str, tuple[int | None, int | None] | None]:
        """New output, and the exit (code, signal) once the process ended."""
        key = _key(order)
        with self._lock:
            if key not in self._running:  # killed, and reaped meanwhile
                return "", (None, signal.SIGKILL)
            handle, out = self._running[key]
            status = self._executor.poll(handle)
            if status is not None:
                del self._running[key]
        text = out.take()
        return text, (status.exit_code, status.signal) if status is not None else None

    def kill(self, order: WorkerOrder) -> None:
        with self._lock:
            running = self._running.get(_key(order))
            if running is not None:
                self._executor.kill(running[0])
                self._killed.add(_key(order))

    def _reap_killed(self) -> None:
        """Killed workers whose task is gone: escalated to SIGKILL and reaped here."""
        while True:
            time.sleep(POLL_SECONDS * 2)
            with self._lock:
                for key in list(self._killed):
                    running = self._running.get(key)
                    if running is None or self._executor.poll(running[0]) is not None:
                        self._running.pop(key, None)
                        self._killed.discard(key)


def _key(order: WorkerOrder) -> str:
    return f"{order.attempt_id}/{order.rank}"


def master_address() -> tuple[str, int]:
    """Where rank 0 of a distributed attempt listens: this node's address and a free port
    (run in rank 0's placement group bundle)."""
    import ray

    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address, free_port()


def _agent(node_id: str, wait_seconds: float = AGENT_WAIT_SECONDS) -> Any:
    """This node's agent; on a node that just joined, the executor starts one within a
    few seconds (at its next start of an attempt)."""
    import ray

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ray.get_actor(AGENT_PREFIX + node_id)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_worker(order: WorkerOrder) -> Iterator[tuple[Any, ...]]:
    """The Ray task of one worker: ``("node", node id, address)`` first, then
    ``("output", text)`` as it comes, last ``("exit", code, signal)``."""
    import ray

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    yield ("node", node_id, address)
    agent = _agent(node_id)
    gpus = ",".join(str(g) for g in ray.get_gpu_ids()) if order.gpus else None
    ray.get(agent.start.remote(order, gpus))
    try:
        while True:
            text, ended = ray.get(agent.poll.remote(order))
            if text:
                yield ("output", text)
            if ended is not None:
                yield ("exit", *ended)
                return
            time.sleep(POLL_SECONDS)
    except BaseException:  # cancelled (killed by the executor): SIGTERM, then SIGKILL
        ray.get(agent.kill.remote(order))
        raise
