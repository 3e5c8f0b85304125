"""The control plane process: ``python -m nimbus.server [--host H] [--port P]``.

:func:`bootstrap` prepares NIMBUS_HOME and the metadata store and makes sure an admin
token exists; :func:`build_app` assembles the control plane (the one place that does: the
services, the app, the background work); :func:`run` serves it with uvicorn until SIGTERM
or SIGINT, finishing requests in flight before it exits.

Scheduler life cycle. The scheduler loop (:meth:`Scheduler.run`) runs in a daemon thread of
the server process (:class:`SchedulerThread`); its attempts run on the executor the
settings name (``forkserver``, warmed up in that thread with torch imported, or ``local``).
A graceful stop ends the loop but leaves running attempts alone: like after a crash
(SIGKILL), the next start of the same instance (its id is kept in NIMBUS_HOME/instance-id)
kills what is left of them and requeues their jobs (:meth:`Scheduler.recover`); fencing
makes every job end exactly once.

Job isolation (``NIMBUS_JOB_ISOLATION``, :mod:`nimbus.jobs.isolation`). By default every
attempt runs in a bubblewrap sandbox with a uid and a cgroup of its own, and
:func:`secure_home` keeps NIMBUS_HOME's secrets (admin token, database, blobs,
deployments) the server's alone. A server that cannot sandbox serves its API but starts no
scheduler: its start line, the log and ``/healthz`` say what is missing. ``none`` runs jobs
unisolated, and says so in the same places and in every ``jobs show``. On the ``ray``
executor each Ray node makes the same sandbox itself
(:mod:`~nimbus.jobs.executors.ray_sandbox`). Sandboxed local jobs have
no network: the server also listens on a unix socket, ``NIMBUS_HOME/run/job-api.sock``,
bound into every sandbox, where it serves the job API and nothing else
(:class:`~nimbus.api.job_socket.JobApiOnly`).

Deployment life cycle. :class:`~nimbus.services.deployment_loop.DeploymentLoop` starts with the
app: it first adopts the replicas of the deployments this instance owns (left serving by a
previous run, stopped or crashed, on their persisted ports), then ticks their supervisors
and keeps their statuses and token files fresh. A graceful stop either detaches (replicas keep
serving until the next start adopts them again: an upgrade) or drains and stops every replica
(the deployments stay, and the next start starts their replicas on the same ports), as
:func:`keeps_deployments` decides. Replicas are tied to this server's home and URL: one whose
home is gone and whose server has not answered for ``replica_orphan_seconds`` exits
(:mod:`nimbus.serving.fleet.orphan`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
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
from typing import IO, Any

import uvicorn
from fastapi import FastAPI

from nimbus.api.app import create_app
from nimbus.api.job_socket import JobApiOnly
from nimbus.api.state import Background, Services
from nimbus.config import Settings, load_settings, parse_master_key
from nimbus.datasets.domain import IngestLimits
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.queue import DbQueue
from nimbus.errors import InvalidInput, NimbusError, Unavailable
from nimbus.jobs import prefetch
from nimbus.jobs.cache import cache_sweeper
from nimbus.jobs.domain import Attempt, Fence, Job, parse_memory
from nimbus.jobs.environments import Builds, EnvironmentLimits, node_builds
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.base import AttemptLaunch, Executor, ExitStatus, Handle, Program
from nimbus.jobs.executors.environment import EnvironmentExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.ray_bridge import RayBridge, shared_bridge  # Ray itself: in a child
from nimbus.jobs.executors.ray_sandbox import UIDS_DIR, LockedUidPool
from nimbus.jobs.isolation import (
    Isolation,
    JobUser,
    TenantCaches,
    prepare_root,
    resolve_isolation,
)
from nimbus.jobs.policy import RetryPolicy
from nimbus.jobs.prefetch import Prefetch
from nimbus.jobs.sandbox import JOB_API_SOCKET, JOB_API_URL, NodeSandboxConfig, Sandbox
from nimbus.jobs.scheduler import Scheduler, SchedulerConfig
from nimbus.services.audit import AuditService, AuditSweep
from nimbus.services.automl_register import AutomlRegistrations, automl_loop
from nimbus.services.blobs import Claims
from nimbus.services.cluster import ClusterService, Identity
from nimbus.services.code import CodeService, CompileCheck
from nimbus.services.datasets import DatasetService, IngestFn
from nimbus.services.deployment_loop import DeploymentLoop, default_supervisor
from nimbus.services.deployments import DeploymentService
from nimbus.services.erasure import ErasureService
from nimbus.services.garbage import GarbageService, garbage_sweep
from nimbus.services.imports import ImportCheck, ModelImports
from nimbus.services.isolated import (
    CHECK_PROBE,
    Confinement,
    LimitedRunner,
    Limits,
    confine_checks,
)
from nimbus.services.job_api import JobApiService
from nimbus.services.jobs import JobService, node_capacity
from nimbus.services.keyring import open_keyring, refuse_unencrypted, rotate_master_key
from nimbus.services.leadership import Election
from nimbus.services.models import ModelCheck, ModelService
from nimbus.services.quotas import QuotaDefaults, QuotaService
from nimbus.services.studies import StudyService, study_loop
from nimbus.services.tokens import TokenService
from nimbus.services.uploads import UploadService
from nimbus.serving.fleet.orphan import Lifeline
from nimbus.serving.timeouts import ReadTimeouts, timeout_protocol
from nimbus.storage.base import ObjectStore
from nimbus.storage.blobs import BlobStore
from nimbus.storage.direct import direct_transfers
from nimbus.storage.encrypted import EncryptedObjectStore
from nimbus.storage.factory import open_object_store
from nimbus.system import bind_unix, exit_now, write_private

log = logging.getLogger("nimbus.server")
ADMIN_TOKEN_FILE = "admin-token"
INSTANCE_ID_FILE = "instance-id"
CACHE_KEY_FILE = "cache-key"  # names the tenants' download caches (TenantCaches)
STALE_TEMP_SECONDS = 3600
GRACEFUL_SHUTDOWN_SECONDS = 15


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


def staging_dirs(settings: Settings, store: ObjectStore | None = None) -> list[Path]:
    """Where uploads and ingest work directories are written before they are stored."""
    store = store if store is not None else open_object_store(settings.resolved_storage_url)
    dirs = [settings.tmp_dir, settings.tmp_dir / "staging"]
    staging = getattr(store, "staging_dir", None)
    return [*dirs, Path(staging)] if staging is not None else dirs


def bootstrap(settings: Settings, isolation: Isolation | None = None) -> str | None:
    """Create NIMBUS_HOME, migrate the metadata store, create tenant ``default`` and,
    when it has no usable admin token, one admin token, written only to
    ``$NIMBUS_HOME/admin-token`` (0600): stdout names the file, never the secret (stdout is
    the server's log, and logs are read by more people than the file). Returns the new
    secret, or None.

    Then lays out NIMBUS_HOME for jobs isolated as ``isolation`` says (:func:`secure_home`)."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(mode=0o700, exist_ok=True)
    database = home / "nimbus.db"
    if settings.resolved_database_url == f"sqlite:///{database}":
        # SQLite gives its -wal and -shm files the database file's mode: make that 0600
        # before SQLite creates the file with the umask's.
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for directory in staging_dirs(settings):
        remove_stale_temp_files(directory)
    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        if settings.encryption_master_key() is None:
            refuse_unencrypted(db)  # encrypted blobs and no key: fail closed, at start
        secret = TokenService(db).ensure_bootstrap_admin()
    finally:
        db.dispose()
    if secret is not None:
        write_private(home / ADMIN_TOKEN_FILE, secret + "\n")
        print(f"admin token created: read it from {home / ADMIN_TOKEN_FILE} (0600)", flush=True)
    # On Ray the control plane's own sandbox resolves job requirements (ray_resolve_sandbox).
    sandboxed = isolation is not None and (isolation.sandbox is not None or isolation.ray_nodes)
    secure_home(settings, sandboxed)
    return secret


def secure_home(settings: Settings, sandboxed: bool) -> None:
    """Modes of NIMBUS_HOME, set on every start (installs made before are fixed too).

    Everything in it is the server's alone: directories 0700 (blobs, tmp, deployments,
    logs), files 0600 (admin-token, nimbus.db and its -wal and -shm, instance-id,
    cache-key, config). When jobs are ``sandboxed``, NIMBUS_HOME, ``jobs/`` and ``cache/``
    are 0711 so an attempt's uid can reach (bind into its sandbox) its work directory and
    its tenant's cache (paths it cannot list: see :mod:`nimbus.jobs.isolation`); otherwise
    0700.
    """
    home = settings.home
    os.chmod(home, 0o711 if sandboxed else 0o700)
    settings.deployments_dir.mkdir(mode=0o700, exist_ok=True)  # its parents=True mkdir: 0755
    passable = {
        settings.jobs_dir.name,
        settings.cache_dir.name,
        settings.job_api_dir.name,
        settings.envs_dir.name,
    }
    for entry in home.iterdir():
        if entry.name in passable or entry.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):  # a temporary file renamed meanwhile
            os.chmod(entry, 0o700 if entry.is_dir() else 0o600)
    prepare_root(settings.jobs_dir, sandboxed)
    prepare_root(settings.cache_dir, sandboxed)
    prepare_root(settings.job_api_dir, sandboxed)
    # Before per-tenant caches, one cache shared by every job sat at cache/sha256/.
    shutil.rmtree(settings.cache_dir / "sha256", ignore_errors=True)


def instance_id(settings: Settings) -> str:
    """This node's scheduler identity, stable across restarts: the setting, or one made up
    on first start and kept in NIMBUS_HOME/instance-id. Attempts are leased to it, and a
    restart gives up (requeues) the attempts leased to it that it no longer runs."""
    if settings.instance_id:
        return settings.instance_id
    return _kept(
        settings.home / INSTANCE_ID_FILE,
        lambda: f"{socket.gethostname()[:60]}-{secrets.token_hex(6)}",
    )


def cache_key(settings: Settings) -> bytes:
    """The secret that names the tenants' download caches, made on first start and kept
    in NIMBUS_HOME/cache-key (0600): the names stay the same across restarts."""
    return bytes.fromhex(_kept(settings.home / CACHE_KEY_FILE, lambda: secrets.token_hex(32)))


def _kept(path: Path, make: Callable[[], str]) -> str:
    """The value in ``path`` (0600), or ``make()`` written there if there is none yet."""
    with contextlib.suppress(FileNotFoundError):
        if existing := path.read_text().strip():
            return existing
    made = make()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    try:
        os.link(tmp, path)  # never replaces a value another process wrote meanwhile
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


def job_api_url(settings: Settings, sandbox: Sandbox | None) -> str:
    """How this node's attempts reach its job API: the socket bound into their sandbox
    (they have no other network), or this server's TCP address."""
    if sandbox is not None and sandbox.settings.job_api_dir is not None:
        return JOB_API_URL
    return own_url(settings.host, settings.port)


class NodeExecutor:
    """The executor attempts run on: created on first use (or by :meth:`warm`, off the
    request path: a fork server imports torch first), and adding this node's variables
    (``extra_env``; ``NIMBUS_CACHE_DIR``, the tenant's download cache from ``caches``) to
    every attempt's environment. Attempts run in ``sandbox``, the fallback's too."""

    def __init__(
        self,
        factory: Callable[[], Executor],
        jobs_root: Path,
        extra_env: Mapping[str, str],
        *,
        sandbox: Sandbox | None = None,
        caches: TenantCaches | None = None,
        prefetch: Prefetch | None = None,
    ) -> None:
        self.factory = factory
        self.jobs_root = jobs_root
        self.extra_env = dict(extra_env)
        self.sandbox = sandbox
        self.caches = caches
        self.prefetch = prefetch
        self._inner: Executor | None = None

    def warm(self) -> Executor:
        if self._inner is None:
            try:
                self._inner = self.factory()
            except Exception:
                log.exception("could not start the configured executor; using 'local'")
                self._inner = LocalExecutor(self.jobs_root, sandbox=self.sandbox)
        return self._inner

    def start(self, launch: AttemptLaunch) -> Handle:
        env = dict(self.extra_env)
        claims: list[prefetch.Claim] = []
        if self.caches is not None:
            cache = self.caches.dir_for(launch.tenant_id)
            env["NIMBUS_CACHE_DIR"] = str(cache)
            claims = self._claim_inputs(launch, cache)
        env.update(launch.extra_env)
        try:
            handle = self.warm().start(dataclasses.replace(launch, extra_env=env))
        except BaseException:
            for held in claims:
                held.release()
            raise
        if claims and self.prefetch is not None:
            # The job starts meanwhile; it waits on a blob's lock only if it needs that
            # blob before it has arrived.
            threading.Thread(
                target=prefetch.fill,
                args=(claims, self.prefetch.url_for, self.prefetch.workers),
                name=f"prefetch-{launch.attempt_id}",
                daemon=True,
            ).start()
        return handle

    def _claim_inputs(self, launch: AttemptLaunch, cache: Path) -> list[prefetch.Claim]:
        """Lock the job's inputs that are not cached yet, to fetch them from the bucket
        (nothing when the blob store has no direct transfers); a failure only means the
        job fetches them itself."""
        if self.prefetch is None:
            return []
        try:
            return prefetch.claim(cache, self.prefetch.inputs(launch.job_id))
        except Exception:
            log.warning("could not prepare the prefetch of job %s", launch.job_id, exc_info=True)
            return []

    def poll(self, handle: Handle) -> ExitStatus | None:
        return self.warm().poll(handle)

    def kill(self, handle: Handle) -> None:
        self.warm().kill(handle)

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        # Orphans are found in /proc, whichever executor started them.
        inner = (
            self._inner
            if self._inner is not None
            else LocalExecutor(self.jobs_root, sandbox=self.sandbox)
        )
        return inner.reap_orphans(should_kill)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


class SchedulerThread:
    """This node's scheduler, run while it leads: its :class:`Election` takes part in the
    leader election of every control plane sharing the metadata store and, for each term it
    wins, runs a :class:`Scheduler` whose queue is fenced by that term's epoch (started and
    stopped with the app; ``stopping`` is set by the server as soon as its shutdown begins:
    no job is claimed while requests in flight finish). The executor warms up in the term's
    thread, once recovery is done, not on the server's start-up path.

    One scheduler per instance id and NIMBUS_HOME: a lock file refuses a second, which
    would otherwise take the first one's attempts for its own leftovers."""

    def __init__(
        self,
        election: Election,
        executor: NodeExecutor,
        lock_path: Path,
        builds: Builds | None = None,
    ) -> None:
        self.election = election
        self.executor = executor
        self.lock_path = lock_path
        self.builds = builds
        # Called when the scheduler recorded the end of attempts: a study's loop wakes.
        self.on_finished: list[Callable[[], object]] = []
        self._lock: IO[str] | None = None

    @classmethod
    def build(
        cls, settings: Settings, services: Services, sandbox: Sandbox | None = None
    ) -> SchedulerThread:
        """The scheduler of this node, as the settings describe it, its attempts running
        in ``sandbox`` (None: unisolated, as this process's user)."""
        node = instance_id(settings)
        jobs_root = settings.jobs_dir
        prepare_root(jobs_root, sandbox is not None)
        group = sandbox.settings.tenant_gid if sandbox is not None else None
        caches = TenantCaches(settings.cache_dir, cache_key(settings), group)
        executor = NodeExecutor(
            lambda: make_executor(
                settings.executor,
                jobs_root,
                preload=tuple(settings.executor_preload),
                grace_seconds=settings.kill_grace_seconds,
                sandbox=sandbox,
                warm=settings.job_warm_sandboxes
                if settings.executor != "ray"
                else int(settings.ray_warm),
                reuse=settings.job_sandbox_reuse,
                ray_address=settings.ray_address,
                ray_jobs_dir=Path(settings.ray_jobs_dir),
                lease_seconds=settings.lease_seconds,
                ray_sandbox=ray_node_sandbox(settings),
                ray_environments=EnvironmentLimits.of(settings),
            ),
            jobs_root,
            {},
            sandbox=sandbox,
            # On Ray, attempts run on other machines: each keeps its cache in its work dir.
            caches=caches if settings.executor != "ray" else None,
            prefetch=(
                prefetch.Prefetch(
                    services.job_api.prefetch_blobs,
                    services.uploads.direct_url,
                    workers=settings.prefetch_workers,
                )
                if services.uploads.direct is not None and settings.executor != "ray"
                else None
            ),
        )
        config = SchedulerConfig(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.lease_seconds / 3,
            tick_seconds=settings.scheduler_tick_seconds,
            tenant_limit=settings.tenant_job_limit,
            retry=RetryPolicy(base_seconds=settings.retry_base_seconds),
            nimbus_url=job_api_url(settings, sandbox),
        )
        if settings.executor == "ray":  # the nodes only install: the resolve is here
            builds = node_builds(settings, *ray_resolve_sandbox(settings))
        else:
            builds = node_builds(settings, sandbox)
        # Requirements are resolved here, once per job; on Ray each node's agent builds the
        # environment from that lock (nimbus.jobs.executors.ray_remote).
        scheduled = EnvironmentExecutor(executor, builds, installs=settings.executor != "ray")
        module = settings.job_module

        def launch(job: Job, attempt: Attempt) -> Program:
            return Program(module=module)

        # On Ray, what the cluster's alive nodes offer now (none while its head is silent).
        ray = services.cluster.ray
        capacity = ray.capacity if ray is not None else services.capacity

        finished: list[Callable[[], object]] = []  # told when attempts ended (see .on_finished)

        def make_scheduler(fence: Fence) -> Scheduler:
            return Scheduler(
                DbQueue(services.db, fence),
                scheduled,
                capacity,
                node,
                jobs_root=jobs_root,
                config=config,
                launch_fn=launch,
                on_finished=lambda: [tell() for tell in finished],
            )

        election = Election(
            services.cluster,
            make_scheduler=make_scheduler,
            on_ready=executor.warm if settings.executor_warm_up == "start" else None,
            reap=reap_left_by,
            take_over_deployments=services.deployments.take_over,
            stopping=services.stopping,
        )
        services.jobs.on_submit = election.wake_scheduler  # starts without waiting a tick
        lock = settings.home / f"scheduler-{node}.lock"
        thread = cls(election, executor, lock, builds)
        thread.on_finished = finished
        return thread

    def start(self) -> None:
        """Take the instance's lock, then join the election (start returns at once; a lone
        control plane leads from its first round)."""
        lock = os.fdopen(
            os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a"
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Unavailable(
                f"another server runs the scheduler of instance "
                f"{self.election.cluster.me.id!r} ({self.lock_path}); give this one its own "
                "NIMBUS_INSTANCE_ID or NIMBUS_HOME"
            ) from None
        self._lock = lock
        self.election.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Leave the election (resigning the lease) and end the scheduler's loop. Running
        attempts are left to the next start's recovery."""
        self.election.stop()
        if self.builds is not None:
            self.builds.close()  # their attempts are requeued by the next start
        if self.executor.sandbox is not None:
            self.executor.sandbox.close()  # this instance's cgroup directories, if empty
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def reap_left_by(jobs_root: Path, should_kill: Callable[[str], bool]) -> list[str]:
    """Kill the processes of attempts a dead control plane of this machine left under its
    ``jobs_root`` (those ``should_kill`` approves); returns their attempt ids."""
    reaper = LocalExecutor(jobs_root)
    try:
        return reaper.reap_orphans(should_kill)
    finally:
        reaper.close()


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        max_unpacked_bytes=settings.max_unpacked_bytes,
        max_members=settings.max_archive_members,
        max_image_pixels=settings.max_image_pixels,
        max_compression_ratio=settings.max_compression_ratio,
    )


def check_limits(settings: Settings, seconds: float) -> Limits:
    """What a check of untrusted input may use: ``seconds`` of wall clock and of CPU."""
    return Limits(
        wall_seconds=seconds,
        cpu_seconds=max(1, int(seconds)),
        memory_bytes=settings.check_memory_bytes,
    )


def lifeline(settings: Settings) -> Lifeline:
    """What this server's replicas belong to: its home and its URL."""
    return Lifeline(
        settings.home, own_url(settings.host, settings.port), settings.replica_orphan_seconds
    )


def keeps_deployments(settings: Settings, interactive: bool) -> bool:
    """Whether a stop leaves the deployments' replicas serving: the ``keep_deployments``
    setting, or, unset, only when not ``interactive``. A server run in a terminal is
    someone's session, and Ctrl+C ends all of it; one run by a service manager is stopped
    for an upgrade or a reboot, and its endpoints should survive the restart."""
    if settings.keep_deployments is not None:
        return settings.keep_deployments
    return not interactive


def ray_bridge(settings: Settings) -> RayBridge:
    """This process's Ray bridge (the submit check, the cluster view, the scheduler's
    capacity and the executor share it)."""
    return shared_bridge(
        settings.ray_address,
        Path(settings.ray_jobs_dir),
        preload=settings.executor_preload,
        grace_seconds=settings.kill_grace_seconds,
        warm=settings.ray_warm,
        lease_seconds=settings.lease_seconds,
        sandbox=ray_node_sandbox(settings),
        environments=EnvironmentLimits.of(settings),
    )


def build_services(
    settings: Settings,
    *,
    objects: ObjectStore | None = None,
    ingest_fn: IngestFn | None = None,
) -> Services:
    """Open the metadata store (already migrated: see :func:`bootstrap`) and the blob store
    named by ``settings`` (or ``objects``), and build the services over them."""
    db = Database(settings.resolved_database_url)
    store = objects if objects is not None else open_object_store(settings.resolved_storage_url)
    blobs = blob_store(settings, db, store)
    quotas = QuotaService(
        db,
        QuotaDefaults(
            jobs=settings.quota_jobs,
            deployments=settings.quota_deployments,
            replicas=settings.quota_replicas,
            bytes=settings.quota_bytes,
        ),
    )
    datasets = DatasetService(
        db,
        blobs,
        tmp_dir=settings.tmp_dir,
        limits=ingest_limits(settings),
        ingest_fn=ingest_fn,
        quotas=quotas,
    )
    checks = LimitedRunner(
        confinement=lambda: check_confinement(settings),
        concurrency=settings.check_concurrency,
    )
    code = CodeService(
        db,
        blobs,
        max_unpacked_bytes=settings.max_code_bytes * 4,
        compile_check=CompileCheck(checks, check_limits(settings, settings.code_check_seconds)),
        quotas=quotas,
    )
    cluster = None
    if settings.executor == "ray" and settings.scheduler_enabled:
        cluster = ray_bridge(settings)
        capacity = cluster.capacity()
    else:
        capacity = node_capacity(
            settings.capacity_cpus, settings.capacity_gpus, settings.capacity_memory
        )
    jobs = JobService(db, datasets, code, capacity, quotas=quotas)
    if cluster is not None:
        jobs.check_resources = cluster.check
    models = ModelService(
        db,
        blobs,
        tmp_dir=settings.tmp_dir,
        check=ModelCheck(checks, check_limits(settings, settings.model_check_seconds)),
    )
    membership = ClusterService(
        db,
        Identity(
            id=instance_id(settings),
            url=own_url(settings.host, settings.port),
            executor=settings.executor,
            capacity=capacity,
            jobs_dir=str(settings.jobs_dir),
        ),
        lease_seconds=settings.leader_lease_seconds,
        ray=cluster,
    )
    # Claims record this control plane; one left by a dead one is dropped when needed.
    claims = Claims(db, blobs, membership.holder(), membership.holder_dead)
    datasets.claims = claims
    uploads = UploadService(
        blobs,
        datasets,
        # None under encryption at rest: the encrypted store signs nothing, so every byte
        # goes through the control plane, which seals it.
        direct_transfers(blobs.objects, settings.storage_public_endpoint),
        url_seconds=settings.presign_seconds,
        max_bytes=settings.max_upload_bytes,
        quotas=quotas,
        claims=claims,
    )
    deployments = DeploymentService(
        db,
        blobs,
        models,
        root=settings.deployments_dir,
        host=settings.host,
        quotas=quotas,
        make_supervisor=functools.partial(default_supervisor, lifeline=lifeline(settings)),
    )
    deployments.owner = instance_id(settings)  # before the election may take some over
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        tokens=TokenService(db),
        audit=AuditService(
            db,
            refused_per_minute=settings.audit_refused_per_minute,
            retention_days=settings.audit_retention_days,
        ),
        datasets=datasets,
        code=code,
        jobs=jobs,
        studies=StudyService(db, jobs, register=models.register),
        job_api=JobApiService(
            db,
            blobs,
            lease_seconds=settings.lease_seconds,
            quotas=quotas,
            max_artifact_bytes=settings.max_artifact_bytes,
            max_artifacts=settings.max_artifacts_per_job,
        ),
        capacity=capacity,
        models=models,
        imports=ModelImports(
            db,
            blobs,
            check=ImportCheck(checks, check_limits(settings, settings.model_check_seconds)),
            quotas=quotas,
        ),
        deployments=deployments,
        cluster=membership,
        quotas=quotas,
        garbage=GarbageService(
            db,
            blobs,
            grace_seconds=settings.blob_grace_seconds,
            staging_dirs=staging_dirs(settings, store),
            staging_grace_seconds=settings.staging_grace_seconds,
            abandoned_uploads=uploads.sweep_abandoned,
        ),
        uploads=uploads,
        erasure=ErasureService(db, blobs),
    )


def blob_store(settings: Settings, db: Database, store: ObjectStore) -> BlobStore:
    """Content-addressed blobs over ``store``: as they are, or, with a master key set,
    encrypted at rest with tenant-scoped keys (docs/storage.md). Fails closed at start
    (EncryptionKeyMismatch) when the key does not match the stored data keys (and
    :func:`bootstrap` when encrypted blobs exist and no key is set)."""
    staging = settings.tmp_dir / "staging"
    master = settings.encryption_master_key()
    if master is None:
        return BlobStore(store, staging)  # bootstrap refused a store of encrypted blobs
    encrypted = EncryptedObjectStore(store, open_keyring(db, master), staging)
    return BlobStore(encrypted, staging, tenant_scoped=True)


def rotate_encryption_key(settings: Settings, new_key_file: Path) -> tuple[str, str, int]:
    """``nimbus admin rotate-key``: re-wrap every data key from the configured master key to
    the one in ``new_key_file``; returns the old and new key ids and how many changed."""
    old = settings.encryption_master_key()
    if old is None:
        raise InvalidInput(
            "set NIMBUS_ENCRYPTION_KEY (or NIMBUS_ENCRYPTION_KEY_FILE) to the current master key"
        )
    try:
        text = new_key_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the new key file {str(new_key_file)!r}: {exc}") from None
    new = parse_master_key(text, f"the new key file {str(new_key_file)!r}")
    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        return rotate_master_key(db, old, new)
    finally:
        db.dispose()


def encryption_summary(blobs: BlobStore) -> str | None:
    """The start line that says which master key this server encrypts with (None: off)."""
    if not isinstance(blobs.objects, EncryptedObjectStore):
        return None
    keyring = blobs.objects.keyring
    return (
        f"encryption at rest on: master key {keyring.master.id}, "
        f"{keyring.check()} tenant data key(s); every byte passes through the control plane"
    )


def build_app(
    settings: Settings,
    services: Services | None = None,
    isolation: Isolation | None = None,
    *,
    keep_deployments: bool = True,
) -> FastAPI:
    """The control plane, assembled: the services (``build_services(settings)`` unless
    given), the app serving them, and the background work it starts and stops: this node's
    scheduler (unless disabled, or refused by ``isolation``: resolved from the settings
    unless given) and the deployment loop (which, at shutdown, leaves the replicas serving
    when ``keep_deployments``, or stops them).

    This is the one place that wires the control plane; :func:`run` serves what it returns.
    """
    services = services if services is not None else build_services(settings)
    background: list[Background] = []
    if settings.scheduler_enabled:
        isolation = isolation if isolation is not None else job_isolation(settings)
        if isolation.runs_jobs:
            scheduler = SchedulerThread.build(settings, services, isolation.sandbox)
            background.append(scheduler)
            # The studies advance where the scheduler leads (their trials are its jobs).
            election = scheduler.election
            studies = study_loop(
                services.studies, lambda: election.fence is not None, settings.study_tick_seconds
            )
            # A trial's job ended: the study asks for the next one now, not at its next tick;
            # so does a study just created, and a trial's reported epoch is judged (pruning)
            # as it comes. Wakes come from this process only: a replica's job API, the tick.
            scheduler.on_finished.append(studies.wake)
            services.studies.on_created.append(studies.wake)
            services.job_api.on_metrics.append(
                lambda job, names: studies.wake() if services.studies.watches(job, names) else None
            )
            background.append(studies)
            # AutoML jobs' winners registered once their jobs succeed (their --register).
            registrations = AutomlRegistrations(services.db, services.models.register)
            background.append(
                automl_loop(
                    registrations, lambda: election.fence is not None, settings.study_tick_seconds
                )
            )
            background.append(
                cache_sweeper(
                    settings.cache_dir, settings.cache_max_bytes, settings.cache_sweep_seconds
                )
            )
        else:
            log.error("no job will run: %s", isolation.refused)
    if not any(isinstance(work, SchedulerThread) for work in background):
        # A control plane that runs no job still registers, serves, and adopts the
        # deployments of a dead one on its machine; it never leads.
        background.append(
            Election(
                services.cluster,
                make_scheduler=None,
                take_over_deployments=services.deployments.take_over,
                stopping=services.stopping,
            )
        )
    background.append(
        DeploymentLoop(services.deployments, instance_id(settings), keep=keep_deployments)
    )
    background.append(AuditSweep(services.audit, settings.audit_sweep_seconds))
    background.append(garbage_sweep(services.garbage, settings.blob_sweep_seconds))
    app = create_app(services, background)
    app.state.job_isolation = isolation if settings.scheduler_enabled else None
    return app


def job_isolation(settings: Settings) -> Isolation:
    """How this node isolates jobs, per the settings (see :mod:`nimbus.jobs.isolation`).
    The Ray executor runs jobs on Ray's nodes, in the sandbox each node makes
    (:mod:`nimbus.jobs.executors.ray_sandbox`), or unsandboxed with ``none``."""
    if settings.executor == "ray" and settings.job_isolation != "none":
        return Isolation("sandbox", ray_nodes=True)  # each node's agent makes its own
    return node_isolation(
        settings,
        settings.job_isolation,
        job_api_dir=settings.job_api_dir,
        environments=settings.envs_dir,
    )


def node_isolation(settings: Settings, mode: str, suffix: str = "", **options: Any) -> Isolation:
    """:func:`resolve_isolation` with this node's job limits from the settings, in the
    cgroups of its instance (``suffix``: a part of its own, e.g. the checks')."""
    return resolve_isolation(
        mode,
        settings.home,
        instance=instance_id(settings) + suffix,
        uid_first=settings.job_uid_first,
        uid_count=settings.job_uid_count,
        disk_limit_bytes=parse_memory(settings.job_disk_limit),
        pids_per_worker=settings.job_pids_limit,
        keep_failed_seconds=settings.job_keep_failed_seconds,
        **options,
    )


def ray_resolve_sandbox(settings: Settings) -> tuple[Sandbox | None, str | None]:
    """On Ray the control plane resolves job requirements (each node installs the lock):
    in a sandbox of its own, as a job uid that the Ray agents of this machine lock too
    (their ``.uids`` files), so no attempt here has it. Else why no resolve may run."""
    if settings.job_isolation.strip().lower() == "none":
        return None, None
    isolation = node_isolation(settings, "sandbox", "-resolve", environments=settings.envs_dir)
    if isolation.sandbox is None:
        return None, f"this control plane cannot sandbox a resolve: {isolation.refused}"
    jobs_root = Path(settings.ray_jobs_dir)
    if jobs_root.is_dir():
        isolation.sandbox.uids = LockedUidPool(
            settings.job_uid_first, settings.job_uid_count, jobs_root / UIDS_DIR
        )
    return isolation.sandbox, None


def ray_node_sandbox(settings: Settings) -> NodeSandboxConfig | None:
    """The sandbox the Ray nodes make for their attempts, per the settings (None: ``none``)."""
    if settings.job_isolation == "none":
        return None
    return NodeSandboxConfig(
        uid_first=settings.job_uid_first,
        uid_count=settings.job_uid_count,
        disk_limit_bytes=parse_memory(settings.job_disk_limit),
        pids_per_worker=settings.job_pids_limit,
        keep_failed_seconds=settings.job_keep_failed_seconds,
        warm=1 if settings.ray_warm else 0,
        reuse=settings.job_sandbox_reuse,
    )


def check_confinement(settings: Settings) -> Confinement:
    """Where this server's checks of uploads run (:mod:`nimbus.services.isolated`): the job
    sandbox as the check user, in cgroups of their own (``nimbus-<instance>-checks``), the
    sandbox tried for real first; refused when it cannot engage; unsandboxed only with
    ``NIMBUS_JOB_ISOLATION=none``."""

    def sandbox_for(user: JobUser) -> Isolation:
        return node_isolation(
            settings,
            settings.job_isolation,
            "-checks",
            probe_as=(user.uid, user.gid),
            probe=CHECK_PROBE,
            in_home=False,
        )

    return confine_checks(settings.job_isolation, settings.check_user, sandbox_for)


class _Server(uvicorn.Server):
    """Tells long-lived responses (log streams) to end as soon as shutdown begins, so
    they do not hold the graceful shutdown to its time limit."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def read_timeouts(settings: Settings) -> ReadTimeouts:
    """The control plane's read deadlines for slow clients, from the ``http_*`` settings."""
    return ReadTimeouts(
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
        min_body_rate=settings.http_min_body_rate,
        max_header_bytes=settings.http_max_header_bytes,
    )


def run(settings: Settings) -> None:
    """Bootstrap, then serve the API on ``settings.host:settings.port`` (and run the
    scheduler, unless disabled) until signalled."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # How jobs are isolated is settled first: NIMBUS_HOME's layout depends on it.
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    isolation = job_isolation(settings) if settings.scheduler_enabled else None
    bootstrap(settings, isolation)
    if isolation is not None:
        line = f"nimbus server: {isolation.summary()}"
        print(line, file=sys.stderr, flush=True)  # beside the start line, as loud
        unsandboxed = isolation.sandbox is None and not isolation.ray_nodes
        if not isolation.runs_jobs or unsandboxed or isolation.degraded:
            log.warning("%s", line)
    keep = keeps_deployments(settings, _interactive())
    print(
        "nimbus server: a stop "
        + (
            "leaves the deployments' replicas serving, for the next start to adopt"
            if keep
            else "stops the deployments' replicas too (the next start starts them)"
        ),
        file=sys.stderr,
        flush=True,
    )
    app = build_app(settings, isolation=isolation, keep_deployments=keep)
    services: Services = app.state.services
    if (summary := encryption_summary(services.blobs)) is not None:
        print(f"nimbus server: {summary}", file=sys.stderr, flush=True)
        log.info("%s", summary)
    config = uvicorn.Config(
        JobApiOnly(app),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools with header and body read deadlines: slow clients cannot hold sockets.
        http=timeout_protocol(read_timeouts(settings)),
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
    sockets = [config.bind_socket()]
    job_socket = settings.job_api_dir / JOB_API_SOCKET
    if isolation is not None and isolation.sandbox is not None:
        sockets.append(bind_unix(job_socket))  # sandboxed jobs' only way out
    try:
        _Server(config, services.stopping).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
        if len(sockets) > 1:
            job_socket.unlink(missing_ok=True)


def _interactive() -> bool:
    """Is this server run in a terminal (its stdin one)?"""
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):  # no stdin, or a replaced one
        return False


def _ignore(signum: int, frame: object) -> None:
    """Signal handler that does nothing."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nimbus.server", description="Nimbus control plane")
    parser.add_argument("--host", default=None, help="address to listen on (NIMBUS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (NIMBUS_PORT)")
    parser.add_argument("--executor", choices=("forkserver", "local", "ray"), help="where jobs run")
    parser.add_argument("--ray-address", default=None, help="HOST:PORT of the Ray head")
    args = parser.parse_args(argv)
    settings = load_settings(
        host=args.host, port=args.port, executor=args.executor, ray_address=args.ray_address
    )
    try:
        run(settings)
    except KeyboardInterrupt:
        sys.exit(130)
    except NimbusError as exc:  # a setting that cannot work: say so, no traceback
        sys.exit(f"nimbus.server: {exc}")
    exit_now(0)  # stopped: gone at once, not after a second of the interpreter's teardown


if __name__ == "__main__":
    main()
