"""What runs inside the Ray cluster for the ``ray`` executor (:mod:`.ray_executor`).

- :class:`NodeAgent`: one actor per node (no resources of its own), the warm pool of that
  node. Sandboxed (the default: :mod:`.ray_sandbox`), it makes the node's sandbox and runs
  each worker process there as a local attempt runs: a uid, namespaces and a cgroup of its
  own, started from a warm sandbox whose zygote imported torch and the runtime. Unsandboxed
  (``job_isolation = none``), a fork server's zygote forks them as the Ray node's user.
  Either way with the scrubbed environment, an own session, SIGTERM then SIGKILL.
- Job environments (``--requirements``): each agent builds the environments of the
  attempts placed on its node from the lock the control plane resolved (it never resolves:
  every node of a job installs the same pins), with the same uv build as a local node's
  (:class:`~nimbus.jobs.executors.environment.EnvironmentExecutor` around its executors:
  as a job uid in the node's sandbox, never as root; the output in the attempt's log; a
  failed build ends the attempt ``environment_build_failed``), kept in
  ``<jobs root>/.envs-<node>`` by the same content hash, with the same LRU limit and one
  build per key. A worker starts once its node has the environment.
- :func:`run_worker`: one worker of an attempt, a Ray task holding the job's resources
  (its CPUs, GPUs, memory and custom resources are what Ray places): it has its node's
  agent start the worker process, then streams the process's output and, last, its exit.
  With ``prepare``, the task only gets its node the attempt's environment (the workers of
  a job of several start once every one of their nodes has it).
  Cancelling the task (the executor's kill) kills the process; the task's death (its node
  died) leaves the process to the agent's death or to fencing: a process whose attempt was
  given up is refused by the job API (409) and exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nimbus.jobs.domain import Resources
from nimbus.jobs.environments import Builds, EnvironmentLimits, EnvironmentSettings
from nimbus.jobs.executors.base import (
    AttemptLaunch,
    Executor,
    ExitStatus,
    Handle,
    OutputSink,
    Program,
)
from nimbus.jobs.executors.environment import EnvironmentExecutor, EnvironmentOnly
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.ray_sandbox import NodeSandboxConfig, NodeSandboxes, SandboxRefused
from nimbus.system import free_port

POLL_SECONDS = 0.1
AGENT_PREFIX = "nimbus-agent-"
AGENT_WAIT_SECONDS = 30.0
REFUSED_EXIT = 125  # the node could not sandbox the worker (the launcher's code for it)
ENVS_PREFIX = ".envs-"  # below the jobs root: a node's built job environments
T = TypeVar("T")


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
    world: int = 1  # the attempt's workers
    agent_key: str = ""  # which agent of its node starts it (AgentConfig.key)
    requirements: tuple[str, ...] = ()  # the job's environment, built on the node first
    lock: tuple[str, ...] = ()  # their pins, resolved by the control plane: what it installs
    prepare: bool = False  # only get the node the environment (no process: see run_worker)
    affinity: str | None = None  # the attempt's (one worker only): its node may reuse a sandbox


@dataclass(frozen=True)
class AgentConfig:
    jobs_root: str
    preload: tuple[str, ...]
    grace_seconds: float
    warm: bool = True  # fork attempts from a zygote with the preload imported; else cold
    sandbox: NodeSandboxConfig | None = None  # None: unsandboxed (job_isolation = none)
    environments: EnvironmentLimits = field(default_factory=EnvironmentLimits)

    @property
    def key(self) -> str:
        """Names this configuration's agents: control planes that share a cluster with other
        settings (one sandboxed, one not) never share an agent."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


def agent_name(key: str, node_id: str) -> str:
    """The name of the agent of configuration ``key`` on node ``node_id``."""
    return f"{AGENT_PREFIX}{key}-{node_id}"


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
    """The warm pool of one node: the node's sandbox (``config.sandbox``), else a fork
    server, started at creation (falls back to fresh processes if it cannot start). Its
    methods are called from several threads."""

    def __init__(self, config: AgentConfig) -> None:
        import ray

        self.config = config
        root = Path(config.jobs_root)
        ctx = ray.get_runtime_context()
        node = ctx.get_node_id()
        envs = root / f"{ENVS_PREFIX}{node[:16]}"
        self.refused: str | None = None  # why this node runs no attempt (its sandbox)
        self._sandboxes: NodeSandboxes | None = None
        self._executors: dict[str, EnvironmentExecutor] = {}  # by use: see _executor_for
        inner: dict[str, Executor] = {}
        if config.sandbox is not None:
            try:
                self._sandboxes = NodeSandboxes.start(
                    config.sandbox,
                    root,
                    node,
                    hidden=Path(ctx.get_temp_dir()),
                    preload=config.preload,
                    grace_seconds=config.grace_seconds,
                    environments=envs,
                )
                inner = {"isolated": self._sandboxes.isolated, "host": self._sandboxes.host}
            except SandboxRefused as exc:
                self.refused = str(exc)
        else:
            inner = {"unsandboxed": _unsandboxed(config)}
        if self.refused is None:
            # This node's environments, built in its sandbox as a job uid (unsandboxed:
            # as the Ray node's user, never root): each executor builds before it starts.
            sandbox = self._sandboxes.sandbox if self._sandboxes is not None else None
            builds = Builds(EnvironmentSettings.at(envs, config.environments), sandbox=sandbox)
            inner["prepare"] = EnvironmentOnly()
            self._executors = {  # never a resolve here: the order carries the job's lock
                use: EnvironmentExecutor(executor, builds, resolves=False)
                for use, executor in inner.items()
            }
        # Every process is started from this one thread, which lives as long as the agent:
        # bwrap's --die-with-parent follows the thread that started it. Polls run there
        # too: an environment's attempt starts its process in a poll, once it is built.
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="start")
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Executor, Handle, _Output]] = {}
        self._killed: set[str] = set()  # polled here until they end (SIGKILL after grace)
        threading.Thread(target=self._reap_killed, name="reap-killed", daemon=True).start()

    def ready(self) -> str:
        if self.refused is not None:
            return f"refused: {self.refused}"
        if self._sandboxes is not None:
            return f"sandboxed: {type(self._sandboxes.isolated).__name__}"
        return type(self._executors["unsandboxed"].inner).__name__

    def start(self, order: WorkerOrder, cuda_devices: str | None) -> str | None:
        """Start the worker (or, with ``order.prepare``, the build of its environment);
        why not (this node cannot sandbox it) as a message, else None."""
        if self.refused is not None:
            return self.refused
        out = _Output()
        executor = self._executor_for(order)
        if self._sandboxes is not None:
            url = self._sandboxes.relay.socket_for(order.nimbus_url)
            launch = node_launch(order, cuda_devices, out.add, nimbus_url=url, own_dirs=True)
        else:
            launch = node_launch(order, cuda_devices, out.add)
        key = _key(order)
        with self._lock:
            handle = self._on_starter(executor.start, launch)
            self._running[key] = (executor, handle, out)
        return None

    def _executor_for(self, order: WorkerOrder) -> Executor:
        if order.prepare:
            return self._executors["prepare"]
        if self._sandboxes is None:
            return self._executors["unsandboxed"]
        return self._executors["isolated" if order.world == 1 else "host"]

    def _on_starter(self, fn: Callable[..., T], *args: Any) -> T:
        return self._starter.submit(fn, *args).result()

    def poll(self, order: WorkerOrder) -> tuple[str, ExitStatus | None]:
        """New output, and how the process ended once it did."""
        key = _key(order)
        with self._lock:
            if key not in self._running:  # killed, and reaped meanwhile
                return "", ExitStatus(None, signal.SIGKILL)
            executor, handle, out = self._running[key]
            status = self._on_starter(executor.poll, handle)
            if status is not None:
                del self._running[key]
        return out.take(), status

    def kill(self, order: WorkerOrder) -> None:
        with self._lock:
            running = self._running.get(_key(order))
            if running is not None:
                running[0].kill(running[1])
                self._killed.add(_key(order))

    def _reap_killed(self) -> None:
        """Killed workers whose task is gone: escalated to SIGKILL and reaped here."""
        while True:
            time.sleep(POLL_SECONDS * 2)
            with self._lock:
                for key in list(self._killed):
                    running = self._running.get(key)
                    if running is None or self._on_starter(running[0].poll, running[1]) is not None:
                        self._running.pop(key, None)
                        self._killed.discard(key)


def _unsandboxed(config: AgentConfig) -> Executor:
    root = Path(config.jobs_root)
    if config.warm:
        with contextlib.suppress(Exception):  # no fork server: attempts start cold
            return ForkServerExecutor(
                root, preload=config.preload, grace_seconds=config.grace_seconds
            )
    return LocalExecutor(root, grace_seconds=config.grace_seconds)


def node_launch(
    order: WorkerOrder,
    cuda_devices: str | None,
    output: OutputSink | None,
    *,
    nimbus_url: str | None = None,
    own_dirs: bool = False,
) -> AttemptLaunch:
    """The launch of one worker on its node: the GPUs Ray gave its task; the control
    plane at ``nimbus_url`` (the node's relay) when given. With ``own_dirs``, each worker
    of several has a cgroup and work directory of its own (``<attempt>.<rank>``: two may
    run on one node) while the job API still knows it by its attempt's id."""
    env = dict(order.env)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices  # the GPUs Ray gave the task
    attempt_id, workdir = order.attempt_id, order.workdir
    if own_dirs and order.world > 1:
        env["NIMBUS_ATTEMPT_ID"] = order.attempt_id
        attempt_id, workdir = f"{attempt_id}.{order.rank}", f"{workdir}.{order.rank}"
    return AttemptLaunch(
        job_id=order.job_id,
        attempt_id=attempt_id,
        attempt_number=order.attempt_number,
        token=order.token,
        program=order.program,
        workdir=Path(workdir),
        nimbus_url=nimbus_url or order.nimbus_url,
        resources=Resources(order.cpus, order.gpus, order.memory_bytes),
        extra_env=env,
        output=output,
        requirements=order.requirements,
        lock=order.lock,
        affinity=order.affinity,
    )


def _key(order: WorkerOrder) -> str:
    return f"{order.attempt_id}/{order.rank}{'/environment' if order.prepare else ''}"


def master_address() -> tuple[str, int]:
    """Where rank 0 of a distributed attempt listens: this node's address and a free port
    (run in rank 0's placement group bundle)."""
    import ray

    address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return address, free_port()


def _agent(name: str, wait_seconds: float = AGENT_WAIT_SECONDS) -> Any:
    """This node's agent; on a node that just joined, the executor starts one within a
    few seconds (at its next start of an attempt)."""
    import ray

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ray.get_actor(name)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_worker(order: WorkerOrder) -> Iterator[tuple[Any, ...]]:
    """The Ray task of one worker: ``("node", node id, address)`` first, then
    ``("output", text)`` as it comes (its environment's build first, if it needs one), last
    ``("exit", ExitStatus)``. With ``order.prepare``, only the environment's build."""
    import ray

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    yield ("node", node_id, address)
    agent = _agent(agent_name(order.agent_key, node_id))
    gpus = ",".join(str(g) for g in ray.get_gpu_ids()) if order.gpus else None
    refused = ray.get(agent.start.remote(order, gpus))
    if refused is not None:
        yield ("output", f"[nimbus] {refused}\n")
        yield ("exit", ExitStatus(REFUSED_EXIT))
        return
    try:
        while True:
            text, ended = ray.get(agent.poll.remote(order))
            if text:
                yield ("output", text)
            if ended is not None:
                yield ("exit", ended)
                return
            time.sleep(POLL_SECONDS)
    except BaseException:  # cancelled (killed by the executor): SIGTERM, then SIGKILL
        ray.get(agent.kill.remote(order))
        raise
