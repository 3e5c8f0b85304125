"""The Ray executor as the control plane uses it: the Ray driver in a child process of its
own (:func:`bridge_main`), driven over a pipe, so the control plane outlives its Ray head.

Ray ends a driver that finds its head restarted as a new cluster (no GCS fault tolerance):
here that ends the child only. Its attempts then end as *lost* (requeued by the retry
policy, resumed from their checkpoints), and the next use starts a new child against the
cluster at the same address. While no child runs (the head is down), starting an attempt
fails (an infrastructure end: retried) and the submit check uses the nodes last listed; the
new child starts in the background, so no caller waits for Ray's connection meanwhile.

While the head is silent (:data:`~nimbus.jobs.ray_cluster.SILENT_SECONDS` without a listing)
the bridge offers no capacity: the scheduler claims nothing, and queued jobs stay queued
until a head answers again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nimbus.errors import InvalidInput, NimbusError, Unavailable
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Resources
from nimbus.jobs.environments import EnvironmentLimits
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus, Handle
from nimbus.jobs.ray_cluster import NODES_TTL_SECONDS, SILENT_SECONDS, RayNode, check_feasible
from nimbus.jobs.sandbox import NodeSandboxConfig

log = logging.getLogger(__name__)
RESTART_SECONDS = 2.0  # between attempts to start a new child
CALL_SECONDS = 120.0  # the longest a call waits for the child (its first start: ray.init)


@dataclass
class BridgeHandle:
    attempt_id: str
    launch: AttemptLaunch
    generation: int  # the child that runs it


@dataclass
class _Child:
    process: Any
    conn: Connection
    generation: int


@dataclass
class _Settings:
    address: str
    jobs_root: str
    preload: tuple[str, ...]
    grace_seconds: float
    warm: bool
    lease_seconds: float = 30.0
    sandbox: NodeSandboxConfig | None = None
    environments: EnvironmentLimits = field(default_factory=EnvironmentLimits)
    extra: dict[str, str] = field(default_factory=dict)


class RayBridge:
    """An :class:`~.base.Executor` whose attempts run on Ray through a child driver; also
    the submit check and the cluster's capacity (:class:`~nimbus.jobs.ray_cluster.RayCluster`'s
    face, from the child's listings)."""

    def __init__(
        self,
        address: str,
        jobs_root: Path,
        *,
        preload: Sequence[str] = ("torch",),
        grace_seconds: float = 10.0,
        warm: bool = True,
        lease_seconds: float = 30.0,
        sandbox: NodeSandboxConfig | None = None,
        environments: EnvironmentLimits | None = None,
    ) -> None:
        self.settings = _Settings(
            address,
            str(jobs_root),
            tuple(preload),
            grace_seconds,
            warm,
            lease_seconds,
            sandbox,
            environments or EnvironmentLimits(),
        )
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._generation = 0
        self._next_start = 0.0
        self._nodes: list[RayNode] = []
        self._listed_at = 0.0  # time.time() of the child's last listing of the nodes
        self._starting = False  # a new child is being started in the background
        self._child = self._spawn()  # now: a control plane refuses to start without Ray
        self._call("nodes")

    # -- the child --------------------------------------------------------------------------

    def _ensure_child(self) -> _Child:
        """The running child. Else a new one starts in the background (``ray.init`` waits
        as long as the head is down) and the caller is told the cluster is unreachable:
        a submit's check or a scheduler's tick never waits for it."""
        child = self._child
        if child is not None and child.process.is_alive():
            return child
        if child is not None:
            log.warning("the Ray driver process ended: its attempts are lost; starting anew")
            self._child = None
        if not self._starting and time.monotonic() >= self._next_start:
            self._starting = True
            threading.Thread(target=self._restart, name="nimbus-ray-start", daemon=True).start()
        raise Unavailable("the Ray cluster is unreachable (its driver is starting)")

    def _restart(self) -> None:
        try:
            child: _Child | None = self._spawn()
        except Unavailable as exc:
            log.warning("could not start the Ray driver: %s", exc)
            child = None
        with self._lock:
            self._child, self._starting = child, False

    def _spawn(self) -> _Child:
        """Start a child and wait for it to connect (or fail to)."""
        self._next_start = time.monotonic() + RESTART_SECONDS
        ctx = multiprocessing.get_context("spawn")  # never fork a threaded server
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=bridge_main, args=(theirs, self.settings), name="nimbus-ray", daemon=True
        )
        process.start()
        theirs.close()
        self._generation += 1  # one start at a time: the constructor's, then _restart's
        child = _Child(process, ours, self._generation)
        try:
            ready = self._receive(child, CALL_SECONDS)
        except Unavailable:
            process.kill()
            raise
        if ready[0] != "ok":
            process.join(5)
            raise Unavailable(
                f"cannot reach the Ray cluster at {self.settings.address}: {ready[1]}"
            )
        return child

    def _receive(self, child: _Child, timeout: float) -> Any:
        if not child.conn.poll(timeout):
            raise Unavailable("the Ray driver process did not answer")
        try:
            return child.conn.recv()
        except (EOFError, OSError):
            raise Unavailable("the Ray driver process ended") from None

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            child = self._ensure_child()
            try:
                child.conn.send((op, args))
                status, value = self._receive(child, CALL_SECONDS)
            except (Unavailable, OSError):
                child.process.kill()
                raise Unavailable("the Ray driver process ended") from None
            if status != "ok":
                raise Unavailable(str(value))
            if op == "nodes":
                self._nodes, silent = value
                self._listed_at = time.time() - silent
                self._end_stranded(child, silent)
            return value, child.generation

    def _end_stranded(self, child: _Child, silent: float) -> None:
        """End a driver whose head has been silent past the lease and one listing period
        more (its attempts were lost at the lease): Ray's driver never gives up a head, and
        one left on a dead head polls it in a busy loop (a core, for as long as it lives).
        The next use starts a new one, which connects when a head answers at the address."""
        if silent > max(self.settings.lease_seconds, SILENT_SECONDS) + NODES_TTL_SECONDS:
            log.warning("the Ray head has not answered for %.0f s: ending its driver", silent)
            child.process.kill()

    # -- the cluster's face -----------------------------------------------------------------

    def nodes(self) -> list[RayNode]:
        with contextlib.suppress(Unavailable):  # else the last listing (the head is down)
            self._call("nodes")
        return list(self._nodes)

    def listing(self) -> tuple[list[RayNode], float]:
        """The alive nodes, and when (``time.time()``) the head last listed them."""
        nodes = self.nodes()
        return nodes, self._listed_at

    def reachable(self) -> bool:
        """Whether a driver runs and the head answered it a listing within the last
        ``SILENT_SECONDS``: what an attempt's start needs."""
        listed_at = self.listing()[1]
        child = self._child
        alive = child is not None and child.process.is_alive()
        return alive and time.time() - listed_at <= SILENT_SECONDS

    def check(self, need: Resources) -> None:
        check_feasible(need, self.nodes())

    def capacity(self) -> Capacity:
        """What the scheduler may claim for now: the alive nodes' sum; none while the
        head is silent (an attempt started then could not be placed or confirmed) or no
        driver runs (a new one is starting: a start would fail)."""
        if not self.reachable():
            return Capacity(cpus=0.0, gpus=0, memory_bytes=0)
        nodes = self._nodes
        return Capacity(
            cpus=sum(n.resources.get("CPU", 0.0) for n in nodes),
            gpus=int(sum(n.resources.get("GPU", 0.0) for n in nodes)),
            memory_bytes=int(sum(n.resources.get("memory", 0.0) for n in nodes)),
        )

    # -- the Executor protocol --------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        sent = dataclasses.replace(launch, output=None, placed=None, locked=None)  # callables stay
        _, generation = self._call("start", sent)
        return BridgeHandle(launch.attempt_id, launch, generation)

    def poll(self, handle: Handle) -> ExitStatus | None:
        bridge = self._handle(handle)
        try:
            value, generation = self._call("poll", bridge.attempt_id)
        except Unavailable:
            return _lost()
        if generation != bridge.generation or value is None:
            return _lost()  # the child that ran it is gone, and its tasks with it
        launch = bridge.launch
        if value["output"] and launch.output is not None:
            launch.output(value["output"])
        if launch.placed is not None:
            for rank, node, address in value["placed"]:
                launch.placed(rank, node, address)
        status: ExitStatus | None = value["status"]
        return status

    def kill(self, handle: Handle) -> None:
        bridge = self._handle(handle)
        try:
            _, generation = self._call("kill", bridge.attempt_id)
        except Unavailable:
            return
        del generation

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        return []  # an earlier driver's tasks ended with it

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                try:
                    self._child.conn.send(("close", ()))
                    self._child.process.join(10)
                except OSError:
                    pass
                if self._child.process.is_alive():
                    self._child.process.kill()
                self._child = None

    def _handle(self, handle: Handle) -> BridgeHandle:
        if not isinstance(handle, BridgeHandle):
            raise TypeError(f"not a handle of this executor: {handle!r}")
        return handle


def _lost() -> ExitStatus:
    from nimbus.jobs.executors.ray_executor import LOST

    return LOST


def _recorder(into: list[tuple[int, str, str]]) -> Callable[[int, str, str], None]:
    def record(rank: int, node: str, address: str) -> None:
        into.append((rank, node, address))

    return record


def bridge_main(conn: Connection, settings: _Settings) -> None:
    """The child: connect to Ray, run a :class:`~.ray_executor.RayExecutor`, answer calls
    until ``close`` or the pipe's end."""
    from nimbus.jobs import ray_cluster
    from nimbus.jobs.executors.ray_executor import RayExecutor

    try:
        cluster = ray_cluster.connect(settings.address)
        executor = RayExecutor(
            cluster,
            Path(settings.jobs_root),
            preload=settings.preload,
            grace_seconds=settings.grace_seconds,
            warm=settings.warm,
            lease_seconds=settings.lease_seconds,
            sandbox=settings.sandbox,
            environments=settings.environments,
        )
    except Exception as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ok", None))
    handles: dict[str, Any] = {}
    outputs: dict[str, list[str]] = {}
    placed: dict[str, list[tuple[int, str, str]]] = {}
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        if cluster.restarted():
            log.warning("the Ray head was restarted (a new cluster): this driver ends")
            break
        try:
            if op == "close":
                break
            if op == "nodes":
                conn.send(("ok", (cluster.nodes(), cluster.silent())))
            elif op == "start":
                launch: AttemptLaunch = args[0]
                key = launch.attempt_id
                outputs[key], placed[key] = [], []
                launch = dataclasses.replace(
                    launch, output=outputs[key].append, placed=_recorder(placed[key])
                )
                handles[key] = executor.start(launch)
                conn.send(("ok", None))
            elif op == "poll":
                key = args[0]
                if key not in handles:
                    conn.send(("ok", None))
                    continue
                status = executor.poll(handles[key])
                reply = {
                    "output": "".join(outputs[key]),
                    "placed": list(placed[key]),
                    "status": status,
                }
                outputs[key].clear()
                placed[key].clear()
                if status is not None:
                    del handles[key], outputs[key], placed[key]
                conn.send(("ok", reply))
            elif op == "kill":
                if args[0] in handles:
                    executor.kill(handles[args[0]])
                conn.send(("ok", None))
        except NimbusError as exc:  # a refusal (no node can place it, the head silent)
            conn.send(("error", exc.message))
        except Exception as exc:
            log.exception("ray bridge call %s failed", op)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    executor.close()


_shared: RayBridge | None = None
_shared_lock = threading.Lock()


def shared_bridge(
    address: str | None,
    jobs_root: Path,
    *,
    preload: Sequence[str] = ("torch",),
    grace_seconds: float = 10.0,
    warm: bool = True,
    lease_seconds: float = 30.0,
    sandbox: NodeSandboxConfig | None = None,
    environments: EnvironmentLimits | None = None,
) -> RayBridge:
    """This process's bridge (the submit check and the executor share it): made on first
    call, with these settings (``sandbox``: how the nodes sandbox attempts; None: not;
    ``environments``: how the nodes build and keep job environments)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            if not address:
                raise InvalidInput(
                    "the ray executor needs NIMBUS_RAY_ADDRESS (HOST:PORT of the head)"
                )
            _shared = RayBridge(
                address,
                jobs_root,
                preload=preload,
                grace_seconds=grace_seconds,
                warm=warm,
                lease_seconds=lease_seconds,
                sandbox=sandbox,
                environments=environments,
            )
        return _shared
