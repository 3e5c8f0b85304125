"""The deployment supervisor: runs each deployment as a set of replica processes.

It starts replicas on one shared listening socket per deployment, checks their health, restarts
the ones that crash (with backoff), rolls them to a new spec one at a time, drains and stops
them, and adopts those a previous control plane left running. What to do is decided by the
pure functions of :mod:`nimbus.serving.fleet.rollout`; this module observes and acts.

Nothing moves by itself: the control plane calls :meth:`Supervisor.tick` every half second or so
(:class:`~nimbus.services.deployment_loop.DeploymentLoop` does it in a thread; a
:class:`~nimbus.ticker.Ticker` does it alone), and persists :meth:`Supervisor.status`.
Process creation, health probes, the clock and sleep are injected.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.serving.access import TOKEN_HASHES_ENV
from nimbus.serving.fleet.deployment import (
    REPLICA_MODULE,
    DeploymentSpec,
    DeploymentState,
    DeploymentStatus,
    ReplicaState,
    ReplicaStatus,
    option,
    without_placement,
)
from nimbus.serving.fleet.orphan import Lifeline
from nimbus.serving.fleet.processes import (
    AdoptedProcess,
    Probe,
    ReplicaProcess,
    Spawner,
    probe_ready,
    spawn,
)
from nimbus.serving.fleet.rollout import (
    Action,
    Kind,
    Policy,
    ReplicaView,
    backoff,
    decide,
    deployment_state,
    rollout_done,
)
from nimbus.serving.fleet.sockets import (
    command_line,
    listening_ports,
    open_listener,
    port_in_use,
    reclaim,
)

log = logging.getLogger(__name__)

# What replicas inherit of the control plane's environment: nothing secret.
ENV_ALLOWLIST = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
)
ADMIN_HOST = "127.0.0.1"
POLL_INTERVAL = 0.1

Listen = Callable[[str, int], socket.socket]


@dataclass
class _Replica:
    id: int
    index: int
    args: tuple[str, ...]  # DeploymentSpec.replica_args() of what it runs
    state: ReplicaState
    since: float
    process: ReplicaProcess | None = None
    admin_port: int | None = None
    restarts: int = 0
    failures: int = 0
    health_failures: int = 0
    retry_at: float = 0.0
    ready_since: float | None = None
    exit_code: int | None = None


@dataclass
class _Deployment:
    spec: DeploymentSpec
    port: int
    listener: socket.socket | None
    replicas: list[_Replica] = field(default_factory=list)
    next_id: int = 0
    stopping: bool = False

    @property
    def target(self) -> tuple[str, ...]:
        return tuple(self.spec.replica_args())

    @property
    def desired(self) -> int:
        return 0 if self.stopping else self.spec.replicas

    def endpoint(self) -> str:
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        return f"http://{host}:{self.port}"


class Supervisor:
    """Runs deployments as replica processes. Thread-safe: one lock around every method.

    ``policy`` sets timeouts and backoff; ``log_dir`` receives one log per replica slot
    (``<name>/replica-<index>.log``; none kept when None); ``env`` is the environment replicas
    get (default: a few harmless variables of this process's, never its secrets);
    ``drain_seconds`` is the replicas' drain window on SIGTERM; ``lifeline`` (the control
    plane's home and URL) lets replicas exit once both are gone for good
    (:mod:`nimbus.serving.fleet.orphan`).
    """

    def __init__(
        self,
        *,
        spawner: Spawner = spawn,
        probe: Probe = probe_ready,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        listen: Listen = open_listener,
        policy: Policy | None = None,
        log_dir: Path | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        probe_timeout: float = 1.0,
        drain_seconds: float | None = None,
        lifeline: Lifeline | None = None,
    ) -> None:
        self._spawner = spawner
        self._probe = probe
        self._clock = clock
        self._sleep = sleep
        self._listen = listen
        self.policy = policy or Policy()
        self._log_dir = log_dir
        self._python = python
        self._env = dict(env) if env is not None else _safe_env(os.environ)
        self._probe_timeout = probe_timeout
        self._drain_seconds = drain_seconds
        self._lifeline = lifeline
        self._deployments: dict[str, _Deployment] = {}
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None

    # -- the control plane's API -------------------------------------------------------------

    def start(self, spec: DeploymentSpec, *, wait: float | None = None) -> str:
        """Start a deployment; returns its endpoint (``http://host:port``).

        The shared socket is bound now (a busy port is a Conflict); replicas are spawned at
        once. With ``wait``, returns once every replica is ready, the deployment has failed,
        or ``wait`` seconds have passed: :meth:`status` tells which.
        """
        with self._lock:
            if spec.name in self._deployments:
                raise Conflict(f"deployment '{spec.name}' is already running")
            if spec.port and port_in_use(spec.host, spec.port):
                raise Conflict(f"port {spec.port} on {spec.host} is in use")
            listener = self._listen(spec.host, spec.port)
            port = int(listener.getsockname()[1])
            dep = _Deployment(replace(spec, port=port), port, listener)
            self._deployments[spec.name] = dep
            log.info("deployment %s: %d replica(s) on port %d", spec.name, spec.replicas, port)
            self._tick(dep)
            endpoint = dep.endpoint()
        if wait:
            self.wait_ready(spec.name, wait)
        return endpoint

    def update(
        self, name: str, spec: DeploymentSpec, *, wait: float | None = None
    ) -> DeploymentStatus:
        """Move a deployment to ``spec``: a rolling update, one replica at a time (start one
        new, wait until ready, drain one old, wait until it exits), or just a scale when only
        ``replicas`` changed. The endpoint stays. With ``wait``, returns when done or after
        ``wait`` seconds; otherwise :meth:`tick` carries it out.
        """
        with self._lock:
            dep = self._get(name)
            if spec.name != name or spec.host != dep.spec.host or spec.port not in (0, dep.port):
                raise InvalidInput("an update keeps the deployment's name, host and port")
            dep.spec = replace(spec, port=dep.port)
            log.info("deployment %s: updating to version %s", name, spec.version)
            self._tick(dep)
        if wait:
            self._wait(name, lambda d: rollout_done(self._views(d), d.desired), wait)
        return self.status(name)

    def stop(self, name: str, *, wait: float | None = None) -> None:
        """Drain and stop every replica, then release the port. Blocks until they have exited
        (SIGKILL after ``wait`` seconds, default the drain timeout plus a few)."""
        with self._lock:
            dep = self._get(name)
            dep.stopping = True
            self._tick(dep)
        limit = wait if wait is not None else self.policy.drain_timeout + 5.0
        if not self._wait(name, lambda d: not d.replicas, limit):
            with self._lock:
                for r in dep.replicas:
                    if r.process is not None:
                        r.process.send_signal(signal.SIGKILL)
            self._wait(name, lambda d: not d.replicas, 5.0)
        with self._lock:
            self._forget(name)

    def adopt(
        self, name: str, spec: DeploymentSpec, pids: Iterable[int], *, wait: float | None = None
    ) -> str:
        """Take over a deployment whose replicas outlived the previous control plane.

        ``spec`` is the deployment's (its ``port`` the persisted one) and ``pids`` the
        persisted replica pids. A pid is adopted only if it still is a replica of this
        deployment listening on that port (pids get recycled); those running another spec are
        rolled, missing replicas are started, binding the same port with SO_REUSEPORT when no
        surviving replica lends its socket.
        """
        if spec.name != name or not spec.port:
            raise InvalidInput("adopt needs the deployment's own spec, with its port")
        with self._lock:
            if name in self._deployments:
                raise Conflict(f"deployment '{name}' is already running")
            dep = _Deployment(spec, spec.port, None)
            for pid in dict.fromkeys(pids):
                self._adopt_one(dep, pid)
            log.info("deployment %s: adopted %d replica(s)", name, len(dep.replicas))
            self._deployments[name] = dep
            self._tick(dep)
            endpoint = dep.endpoint()
        if wait:
            self.wait_ready(name, wait)
        return endpoint

    def status(self, name: str) -> DeploymentStatus:
        """The deployment and its replicas, for the control plane to show and persist."""
        with self._lock:
            dep = self._get(name)
            replicas = tuple(
                ReplicaStatus(
                    index=r.index,
                    pid=r.process.pid if r.process is not None else None,
                    port=r.admin_port,
                    state=r.state,
                    restarts=r.restarts,
                    model_version=option(r.args, "--version") or "?",
                    exit_code=r.exit_code,
                )
                for r in sorted(dep.replicas, key=lambda r: (r.index, r.id))
            )
            return DeploymentStatus(
                name=name,
                state=deployment_state(self._views(dep), dep.desired, self.policy, dep.stopping),
                endpoint=dep.endpoint(),
                port=dep.port,
                model_version=dep.spec.version,
                replicas=replicas,
            )

    def names(self) -> list[str]:
        """The deployments this supervisor runs."""
        with self._lock:
            return sorted(self._deployments)

    def wait_ready(self, name: str, timeout: float) -> DeploymentStatus:
        """Tick until every replica of ``name`` is ready, it has failed, or ``timeout``."""

        def settled(dep: _Deployment) -> bool:
            state = deployment_state(self._views(dep), dep.desired, self.policy)
            return state in (DeploymentState.READY, DeploymentState.FAILED)

        self._wait(name, settled, timeout)
        return self.status(name)

    def tick(self) -> None:
        """One round for every deployment: notice exits, check health, act."""
        with self._lock:
            for dep in list(self._deployments.values()):
                self._tick(dep)

    def detach(self) -> None:
        """Forget every deployment and leave its replicas serving (a control-plane shutdown
        that keeps endpoints up; a later :meth:`adopt` takes them back)."""
        with self._lock:
            for name in list(self._deployments):
                self._forget(name)

    def close(self) -> None:
        """Stop every deployment."""
        for name in self.names():
            self.stop(name)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one round -----------------------------------------------------------------------------

    def _tick(self, dep: _Deployment) -> None:
        now = self._clock()
        self._reap(dep, now)
        self._check_health(dep, now)
        for action in decide(self._views(dep), dep.desired, now, self.policy):
            self._apply(dep, action, now)

    def _reap(self, dep: _Deployment, now: float) -> None:
        for r in list(dep.replicas):
            code = r.process.poll() if r.process is not None else None
            if r.process is None or code is None:
                continue
            r.process.close()
            r.process, r.admin_port, r.exit_code, r.ready_since = None, None, code, None
            if r.state is ReplicaState.DRAINING:
                dep.replicas.remove(r)
                continue
            r.failures += 1
            r.state, r.since = ReplicaState.EXITED, now
            r.retry_at = now + self._backoff(r.failures)
            log.warning("deployment %s: replica %d exited (%s)", dep.spec.name, r.index, code)

    def _check_health(self, dep: _Deployment, now: float) -> None:
        checked = [
            r
            for r in dep.replicas
            if r.process is not None
            and r.admin_port is not None
            and r.state is not ReplicaState.DRAINING
        ]
        for r, ok in zip(checked, self._probe_all(checked), strict=True):
            if ok:
                if r.state is not ReplicaState.READY:
                    r.state, r.since, r.ready_since = ReplicaState.READY, now, now
                r.health_failures = 0
                if r.ready_since is not None and now - r.ready_since >= self.policy.stable_after:
                    r.failures = 0
            elif r.state is ReplicaState.READY:
                r.state, r.since, r.health_failures = ReplicaState.UNHEALTHY, now, 1
                r.ready_since = None
            elif r.state is ReplicaState.UNHEALTHY:
                r.health_failures += 1

    def _probe_all(self, replicas: list[_Replica]) -> list[bool]:
        ports = [r.admin_port or 0 for r in replicas]
        if len(ports) <= 1:
            return [self._probe(ADMIN_HOST, p, self._probe_timeout) for p in ports]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nimbus-probe")
        timeout = self._probe_timeout
        return list(self._pool.map(lambda p: self._probe(ADMIN_HOST, p, timeout), ports))

    def _apply(self, dep: _Deployment, action: Action, now: float) -> None:
        if action.kind is Kind.START:
            r = _Replica(dep.next_id, _free_index(dep), dep.target, ReplicaState.STARTING, now)
            dep.next_id += 1
            dep.replicas.append(r)
            self._spawn(dep, r, now)
            return
        r = next(r for r in dep.replicas if r.id == action.replica)
        if action.kind is Kind.RESTART:
            r.restarts += 1
            log.warning("deployment %s: restarting replica %d", dep.spec.name, r.index)
            self._spawn(dep, r, now)
        elif action.kind is Kind.REMOVE:
            dep.replicas.remove(r)
        elif action.kind is Kind.TERMINATE and r.process is not None:
            r.process.send_signal(signal.SIGTERM)
            r.state, r.since = ReplicaState.DRAINING, now
        elif action.kind is Kind.KILL and r.process is not None:
            log.warning("deployment %s: killing replica %d (%s)", dep.spec.name, r.index, r.state)
            r.process.send_signal(signal.SIGKILL)

    def _spawn(self, dep: _Deployment, r: _Replica, now: float) -> None:
        r.args, r.state, r.since, r.exit_code = dep.target, ReplicaState.STARTING, now, None
        r.health_failures = 0
        admin: socket.socket | None = None
        try:
            if dep.listener is None:
                dep.listener = self._listen(dep.spec.host, dep.port)
            admin = open_listener(ADMIN_HOST, 0, reuse_port=False, backlog=64)
            fds = [dep.listener.fileno(), admin.fileno()]
            argv = [self._python, "-m", REPLICA_MODULE, *r.args]
            argv += ["--fd", str(fds[0]), "--admin-fd", str(fds[1])]
            if self._drain_seconds is not None:
                argv += ["--drain-seconds", str(self._drain_seconds)]
            if self._lifeline is not None:
                argv += self._lifeline.args()
            env = dict(self._env)
            if dep.spec.token_hashes:
                env[TOKEN_HASHES_ENV] = ",".join(dep.spec.token_hashes)
            log_path = (
                self._log_dir / dep.spec.name / f"replica-{r.index}.log" if self._log_dir else None
            )
            r.process = self._spawner(argv, env, fds, log_path)
            r.admin_port = int(admin.getsockname()[1])
        except OSError as exc:
            log.error("deployment %s: cannot start a replica: %s", dep.spec.name, exc)
            r.failures += 1
            r.state, r.process, r.admin_port = ReplicaState.EXITED, None, None
            r.retry_at = now + max(self.policy.backoff_base, self._backoff(r.failures))
        finally:
            if admin is not None:
                admin.close()  # the replica holds its own copy

    # -- adoption --------------------------------------------------------------------------------

    def _adopt_one(self, dep: _Deployment, pid: int) -> None:
        try:
            process = AdoptedProcess(pid)  # pins the pid before we look at what it is
        except OSError:
            log.info("deployment %s: replica %d is gone", dep.spec.name, pid)
            return
        argv = command_line(pid)
        opts = argv[argv.index(REPLICA_MODULE) + 1 :] if REPLICA_MODULE in argv else []
        fd, admin_fd = option(opts, "--fd"), option(opts, "--admin-fd")
        ports: dict[int, int] = {}
        if option(opts, "--name") == dep.spec.name and fd and admin_fd:
            ports = listening_ports(pid, [int(fd), int(admin_fd)])
        if not fd or ports.get(int(fd)) != dep.port or process.poll() is not None:
            log.warning("deployment %s: pid %d is not one of its replicas", dep.spec.name, pid)
            process.close()
            return
        if dep.listener is None:
            dep.listener = reclaim(pid, int(fd))
        now = self._clock()
        args = tuple(without_placement(opts))
        admin_port = ports.get(int(admin_fd or -1))
        r = _Replica(dep.next_id, _free_index(dep), args, ReplicaState.STARTING, now, process)
        r.admin_port = admin_port
        dep.next_id += 1
        dep.replicas.append(r)

    # -- helpers ---------------------------------------------------------------------------------

    def _get(self, name: str) -> _Deployment:
        dep = self._deployments.get(name)
        if dep is None:
            raise NotFound(f"no deployment '{name}'")
        return dep

    def _forget(self, name: str) -> None:
        dep = self._deployments.pop(name)
        if dep.listener is not None:
            dep.listener.close()
        for r in dep.replicas:
            if r.process is not None:
                r.process.close()

    def _views(self, dep: _Deployment) -> list[ReplicaView]:
        target = dep.target
        return [
            ReplicaView(
                r.id, r.args == target, r.state, r.since, r.retry_at, r.health_failures, r.failures
            )
            for r in dep.replicas
        ]

    def _backoff(self, failures: int) -> float:
        return backoff(failures, self.policy.backoff_base, self.policy.backoff_cap)

    def _wait(self, name: str, done: Callable[[_Deployment], bool], timeout: float) -> bool:
        deadline = self._clock() + timeout
        while True:
            with self._lock:
                dep = self._get(name)
                self._tick(dep)
                if done(dep):
                    return True
            if self._clock() >= deadline:
                return False
            self._sleep(POLL_INTERVAL)


def _free_index(dep: _Deployment) -> int:
    """The lowest slot no replica of the current spec holds: a replacement started during a
    roll takes the slot of an old replica it is about to replace."""
    target = dep.target
    used = {
        r.index for r in dep.replicas if r.state is not ReplicaState.DRAINING and r.args == target
    }
    return next(i for i in range(len(used) + 1) if i not in used)


def _safe_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: environ[k] for k in ENV_ALLOWLIST if k in environ}
