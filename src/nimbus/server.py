"""The control plane process: ``python -m nimbus.server [--host H] [--port P]``.

:func:`bootstrap` prepares NIMBUS_HOME and the metadata store and makes sure an admin
token exists; :func:`run` serves the API with uvicorn, with the job scheduler beside it
(:class:`SchedulerThread`), until SIGTERM or SIGINT, finishing requests in flight before it
exits.

Scheduler life cycle. The scheduler runs in a daemon thread of the server process; its
attempts run on the executor the settings name (``forkserver``, warmed up in the
background with torch imported, or ``local``). A graceful stop ends the loop but leaves
running attempts alone: like after a crash (SIGKILL), the next start of the same instance
(its id is kept in NIMBUS_HOME/instance-id) kills what is left of them and requeues their
jobs (:meth:`Scheduler.recover`); fencing makes every job end exactly once.

Deployment life cycle. :class:`~nimbus.services.deployments.DeploymentLoop` starts with the
app: it first adopts the replicas of the deployments this instance owns (left serving by a
previous run, stopped or crashed, on their persisted ports), then ticks their supervisors
and keeps their statuses and token files fresh. A graceful stop detaches: replicas keep
serving until the next start adopts them again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

import uvicorn

from nimbus.api.app import build_services, create_app
from nimbus.api.state import Services
from nimbus.config import Settings, load_settings
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.errors import Unavailable
from nimbus.jobs.executor import AttemptLaunch, Executor, ExitStatus, Handle, Program
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.model import Attempt, Job
from nimbus.jobs.runner import Scheduler, SchedulerConfig
from nimbus.jobs.scheduling import RetryPolicy
from nimbus.services.deployments import DeploymentLoop
from nimbus.services.tokens import TokenService
from nimbus.storage.factory import open_object_store

log = logging.getLogger("nimbus.server")
ADMIN_TOKEN_FILE = "admin-token"
INSTANCE_ID_FILE = "instance-id"
STALE_TEMP_SECONDS = 3600
GRACEFUL_SHUTDOWN_SECONDS = 15


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` with mode 0600, atomically (never readable by others,
    not even for a moment)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: Path, older_than: float = STALE_TEMP_SECONDS) -> None:
    """Leftovers of a crashed process (uploads, ingest work directories) older than an hour;
    younger ones may belong to another server sharing this directory."""
    if not directory.is_dir():
        return
    cutoff = time.time() - older_than
    for entry in directory.iterdir():
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove stale temporary file %s", entry)


def staging_dirs(settings: Settings) -> list[Path]:
    """Where uploads and ingest work directories are written before they are stored."""
    store = open_object_store(settings.resolved_storage_url)
    dirs = [settings.tmp_dir, settings.tmp_dir / "staging"]
    staging = getattr(store, "staging_dir", None)
    return [*dirs, Path(staging)] if staging is not None else dirs


def bootstrap(settings: Settings) -> str | None:
    """Create NIMBUS_HOME (0700), migrate the metadata store, create tenant ``default`` and,
    when it has no usable admin token, one admin token: printed once to stdout and written
    to ``$NIMBUS_HOME/admin-token`` (0600). Returns the new secret, or None."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(mode=0o700, exist_ok=True)
    for directory in staging_dirs(settings):
        remove_stale_temp_files(directory)
    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        secret = TokenService(db).ensure_bootstrap_admin()
    finally:
        db.dispose()
    if secret is not None:
        write_secret(home / ADMIN_TOKEN_FILE, secret)
        print(f"admin token: {secret}", flush=True)
        print(f"(saved to {home / ADMIN_TOKEN_FILE}; it is not shown again)", flush=True)
    return secret


def instance_id(settings: Settings) -> str:
    """This node's scheduler identity, stable across restarts: the setting, or one made up
    on first start and kept in NIMBUS_HOME/instance-id. Attempts are leased to it, and a
    restart gives up (requeues) the attempts leased to it that it no longer runs."""
    if settings.instance_id:
        return settings.instance_id
    path = settings.home / INSTANCE_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        if existing := path.read_text().strip():
            return existing
    made = f"{socket.gethostname()[:60]}-{secrets.token_hex(6)}"
    fd, tmp = tempfile.mkstemp(dir=settings.home, prefix=f".{INSTANCE_ID_FILE}-")
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    try:
        os.link(tmp, path)  # never replaces an id another process wrote meanwhile
    except FileExistsError:
        made = path.read_text().strip()
    finally:
        os.unlink(tmp)
    return made


def own_url(host: str, port: int) -> str:
    """How job processes on this machine reach this server."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class NodeExecutor:
    """The executor attempts run on: created on first use (or by :meth:`warm`, off the
    request path: a fork server imports torch first), and adding this node's variables
    (``NIMBUS_CACHE_DIR``) to every attempt's environment."""

    def __init__(self, factory: Callable[[], Executor], jobs_root: Path,
                 extra_env: Mapping[str, str]) -> None:
        self.factory = factory
        self.jobs_root = jobs_root
        self.extra_env = dict(extra_env)
        self._inner: Executor | None = None

    def warm(self) -> Executor:
        if self._inner is None:
            try:
                self._inner = self.factory()
            except Exception:
                log.exception("could not start the configured executor; using 'local'")
                self._inner = LocalExecutor(self.jobs_root)
        return self._inner

    def start(self, launch: AttemptLaunch) -> Handle:
        env = {**self.extra_env, **launch.extra_env}
        return self.warm().start(dataclasses.replace(launch, extra_env=env))

    def poll(self, handle: Handle) -> ExitStatus | None:
        return self.warm().poll(handle)

    def kill(self, handle: Handle) -> None:
        self.warm().kill(handle)

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        # Orphans are found in /proc, whichever executor started them.
        inner = self._inner if self._inner is not None else LocalExecutor(self.jobs_root)
        return inner.reap_orphans(should_kill)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class SchedulerThread:
    """Runs a :class:`Scheduler` in a daemon thread until :meth:`stop` (or ``stopping``).

    One scheduler per instance id and NIMBUS_HOME: a lock file refuses a second, which
    would otherwise take the first one's attempts for its own leftovers."""

    def __init__(self, scheduler: Scheduler, executor: NodeExecutor, lock_path: Path,
                 stopping: threading.Event | None = None) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.lock_path = lock_path
        self.stopping = stopping or threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: IO[str] | None = None

    @classmethod
    def build(cls, settings: Settings, services: Services) -> SchedulerThread:
        """The scheduler of this node, as the settings describe it."""
        node = instance_id(settings)
        jobs_root, cache = settings.jobs_dir, settings.cache_dir
        for directory in (jobs_root, cache):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        executor = NodeExecutor(
            lambda: make_executor(settings.executor, jobs_root,
                                  preload=tuple(settings.executor_preload),
                                  grace_seconds=settings.kill_grace_seconds),
            jobs_root, {"NIMBUS_CACHE_DIR": str(cache)})
        config = SchedulerConfig(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.lease_seconds / 3,
            tick_seconds=settings.scheduler_tick_seconds,
            tenant_limit=settings.tenant_job_limit,
            retry=RetryPolicy(base_seconds=settings.retry_base_seconds),
            nimbus_url=own_url(settings.host, settings.port),
        )
        module = settings.job_module

        def launch(job: Job, attempt: Attempt) -> Program:
            return Program(module=module)

        scheduler = Scheduler(services.db, executor, services.capacity, node,
                              jobs_root=jobs_root, config=config, launch_fn=launch)
        lock = settings.home / f"scheduler-{node}.lock"
        return cls(scheduler, executor, lock, services.stopping)

    def start(self) -> None:
        """Take the instance's lock, then recover and tick in a thread (start returns at
        once: the executor warms up there, not on the server's start-up path)."""
        lock = self.lock_path.open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Unavailable(
                f"another server runs the scheduler of instance {self.scheduler.instance_id!r}"
                f" ({self.lock_path}); give this one its own NIMBUS_INSTANCE_ID or "
                "NIMBUS_HOME") from None
        self._lock = lock
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            gone = self.scheduler.recover()
            if gone:
                log.info("recovered after a restart: gave up %s", ", ".join(sorted(set(gone))))
        except Exception:
            log.exception("scheduler recovery failed")
        self.executor.warm()
        log.info("scheduler %s running", self.scheduler.instance_id)
        while not (self._stop.is_set() or self.stopping.is_set()):
            try:
                self.scheduler.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self._stop.wait(self.scheduler.config.tick_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop. Running attempts are left to the next start's recovery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class _Server(uvicorn.Server):
    """Tells long-lived responses (log streams) to end as soon as shutdown begins, so
    they do not hold the graceful shutdown to its time limit."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def run(settings: Settings) -> None:
    """Bootstrap, then serve the API on ``settings.host:settings.port`` (and run the
    scheduler, unless disabled) until signalled."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    bootstrap(settings)
    services = build_services(settings)
    background = [SchedulerThread.build(settings, services)] if settings.scheduler_enabled else []
    deployments = DeploymentLoop(services.deployments, instance_id(settings))
    app = create_app(settings, services, [*background, deployments])
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    # uvicorn handles SIGTERM and SIGINT: it stops accepting, finishes the requests in
    # flight, then re-raises the signal with the handler that was in place before it ran.
    # A no-op handler for SIGTERM makes that graceful stop end the process with status 0.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _ignore)
    _Server(config, services.stopping).run()


def _ignore(signum: int, frame: object) -> None:
    """Signal handler that does nothing."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nimbus.server", description="Nimbus control plane")
    parser.add_argument("--host", default=None, help="address to listen on (NIMBUS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (NIMBUS_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings(host=args.host, port=args.port)
    try:
        run(settings)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
