"""Settings, read once from NIMBUS_* environment variables and passed down.

Nothing in the package reads the environment at import time: entry points call
:func:`load_settings` and hand the result to the objects that need it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nimbus.errors import InvalidInput

MASTER_KEY_BYTES = 32


class Settings(BaseSettings):
    """Typed settings for the server, the CLI and job processes."""

    model_config = SettingsConfigDict(env_prefix="NIMBUS_", extra="ignore")

    home: Path = Field(default=Path("~/.nimbus"))
    url: str = "http://127.0.0.1:8600"
    token: str | None = None
    database_url: str | None = None
    storage_url: str | None = None
    # Encryption at rest (docs/storage.md): the master key, 32 bytes in base64 (`openssl
    # rand -base64 32`), given itself or as a file holding it; unset: blobs are stored as
    # they are. Only the control plane reads it (jobs get a scrubbed environment).
    encryption_key: SecretStr | None = None
    encryption_key_file: Path | None = None
    # Direct transfers (object-storage backends): presigned URLs are signed for this
    # endpoint when clients reach the storage service at another address than the server
    # does (unset: the server's own, e.g. AWS_ENDPOINT_URL), and expire after this long.
    storage_public_endpoint: str | None = None
    presign_seconds: int = Field(default=300, ge=10, le=7 * 24 * 3600)
    # A node fetches a job's inputs from the bucket this many at a time (jobs/prefetch.py).
    prefetch_workers: int = Field(default=4, ge=1, le=32)
    # The client's side: files from this size on go straight to the bucket when the server
    # offers direct transfers, this many parts at a time.
    direct_min_bytes: int = Field(default=32 * 1024**2, ge=1)
    upload_workers: int = Field(default=8, ge=1, le=64)

    host: str = "127.0.0.1"
    port: int = 8600

    # Limits on what users may send.
    max_upload_bytes: int = 8 * 1024**3
    max_unpacked_bytes: int = 16 * 1024**3
    max_archive_members: int = 2_000_000
    max_image_pixels: int = 40_000_000
    max_compression_ratio: float = 200.0
    max_code_bytes: int = 256 * 1024**2  # an uploaded training script or code archive

    # How long a client may take to send a request to the control plane (slowloris): the
    # request line and headers within http_header_timeout_seconds (at most
    # http_max_header_bytes, else 431), the body within http_body_timeout_seconds plus one
    # second per http_min_body_rate bytes received; past either, 408 and the connection
    # is closed (nimbus.serving.timeouts).
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_timeout_seconds: float = Field(default=20.0, gt=0)
    http_min_body_rate: float = Field(default=64 * 1024.0, gt=0)  # bytes per second
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024)

    # Limits on what one caller may hold of the control plane's own resources.
    max_log_streams_per_token: int = Field(default=16, ge=1)  # open logs?follow=true

    # Artifacts a job may store: each at most this big (413), at most this many per job.
    max_artifact_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_artifacts_per_job: int = Field(default=100, ge=1)
    # Default per-tenant quotas, for tenants an operator gave none (unset: no limit):
    # queued + running jobs, deployments, replicas, bytes stored (datasets, code, artifacts).
    quota_jobs: int | None = Field(default=None, ge=0)
    quota_deployments: int | None = Field(default=None, ge=0)
    quota_replicas: int | None = Field(default=None, ge=0)
    quota_bytes: int | None = Field(default=None, ge=0)

    # The audit log: refused calls of unidentified callers past this many per client
    # address and minute are counted in one summary row; events older than the retention
    # period are deleted by a sweep every audit_sweep_seconds (None: kept forever).
    audit_refused_per_minute: int = Field(default=10, ge=0)
    audit_retention_days: float | None = Field(default=365.0, gt=0)
    audit_sweep_seconds: float = Field(default=60.0, gt=0)

    # Studies (nimbus tune): the scheduler's leader advances them every study_tick_seconds.
    study_tick_seconds: float = Field(default=1.0, gt=0)

    # Training jobs: the embedded scheduler and where its attempts run.
    scheduler_enabled: bool = True  # false: API only (jobs queue up, nothing runs them)
    executor: Literal["forkserver", "local", "ray"] = "forkserver"
    # The Ray executor (docs/cluster.md): the cluster's address (HOST:PORT of the head's GCS;
    # its token, when the cluster has token authentication, from RAY_AUTH_TOKEN or
    # RAY_AUTH_TOKEN_PATH as Ray reads them), where attempts' work directories go on its
    # nodes, and whether each node's agent forks attempts from a warm zygote (torch and the
    # runtime imported) or starts a fresh python per attempt (false: cold, slower).
    ray_address: str | None = None
    ray_jobs_dir: str = "/tmp/nimbus-ray-jobs"
    ray_warm: bool = True
    # Modules the fork server imports once so attempts start warm: the job runtime itself
    # (scikit-learn and torch's compiler stack take ~4 s to import cold).
    executor_preload: list[str] = Field(
        default_factory=lambda: ["torch", "torch._dynamo", "nimbus.runtime.entry"]
    )
    # When the executor warms up (a fork server's zygote imports the preload, ~5 s of CPU
    # and ~0.4 GB held; Ray: the connection to the cluster): "start", as soon as this node
    # leads, so the first job starts warm; "first-job", when the first job of the term is
    # started (a node that seldom trains keeps neither the CPU nor the memory until then).
    executor_warm_up: Literal["start", "first-job"] = "start"
    scheduler_tick_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    kill_grace_seconds: float = Field(default=10.0, ge=0)
    retry_base_seconds: float = Field(default=10.0, ge=0)  # backoff before a retry, doubling
    tenant_job_limit: int | None = Field(default=None, ge=1)  # running jobs per tenant
    job_module: str = "nimbus.runtime.entry"  # what an attempt runs (python -m)
    # How attempts are isolated (nimbus.jobs.isolation). "sandbox": each in a bubblewrap
    # sandbox with a uid and a cgroup of its own; a server that cannot (not root, no bwrap,
    # an interpreter other users cannot read) serves its API but runs no job, and says
    # why. "none": jobs run unisolated as the server's user (a single-user machine).
    job_isolation: Literal["sandbox", "none"] = "sandbox"
    job_uid_first: int = Field(default=2_000_000_000, ge=1000, le=4_000_000_000)
    job_uid_count: int = Field(default=65_536, ge=1, le=1_000_000)  # uids; then tenant gids
    # Per attempt: its work directory with its /tmp (on disk) in all, and any one file it
    # writes (RLIMIT_FSIZE; SIGXFSZ cannot be ignored); /dev/shm's size (memory: it also
    # counts against --memory). Past it the attempt ends disk_limit, not retried.
    job_disk_limit: str = "20G"
    job_pids_limit: int = Field(default=4096, ge=16)  # processes and threads per worker
    job_keep_failed_seconds: float = Field(default=86_400.0, ge=0)  # failed work dirs kept
    # Warm sandboxes (executor forkserver, sandboxed): attempts' sandboxes started ahead
    # with the preloaded modules imported, each claimed by one attempt of the tenant it was
    # started for (the tenants seen last); 0: every attempt starts cold. Each holds ~0.3 GB
    # while it waits (the default preload), counted in its attempt's --memory once claimed.
    # One claimed is replaced at once (several start together); an attempt that finds none
    # of its tenant ready waits for the one starting rather than starting cold.
    job_warm_sandboxes: int = Field(default=2, ge=0, le=64)
    # A warm sandbox whose attempt ended serves the next attempt of the same affinity (the
    # same submitter's token, code, dataset version and resources: a study's trials) instead
    # of ending with it (jobs/executors/warm.py, "One attempt after another"); false: every
    # attempt in a sandbox of its own.
    job_sandbox_reuse: bool = True
    # Job environments (--requirements, docs/environments.md): built with uv as a job uid,
    # kept in NIMBUS_HOME/envs by content hash; past this size in all, the least recently
    # used go. A build longer than the timeout fails its job. The index: uv's default (PyPI)
    # unless set.
    job_env_max_size: str = "20G"
    job_env_build_timeout_seconds: float = Field(default=1800.0, gt=0)
    job_env_index_url: str | None = None
    # A job's requirements are resolved once into a lock kept with the job; a list asked
    # for again on this node within this many seconds reuses the lock it resolved to (no
    # resolve), after it is resolved again (an unpinned requirement follows its index).
    job_env_resolve_ttl_seconds: float = Field(default=86_400.0, ge=0)
    # Several control planes on one metadata store (docs/cluster.md): one leads and runs
    # the scheduler, renewing its lease every fifth of this; another takes over when the
    # lease runs out. A control plane silent this long is dead: its deployments on this
    # machine are adopted, its attempts here reaped and requeued.
    leader_lease_seconds: float = Field(default=5.0, gt=0)
    instance_id: str | None = None  # default: generated once, kept in NIMBUS_HOME/instance-id
    # What this node offers jobs; detected when unset. Memory as bytes or "16G".
    capacity_cpus: float | None = Field(default=None, gt=0)
    capacity_gpus: int | None = Field(default=None, ge=0)
    capacity_memory: str | None = None

    # Deployments when the control plane stops (docs/deployments.md): keep_deployments
    # true leaves their replicas serving, to be adopted by the next start (an upgrade);
    # false stops them (the next start starts them again); unset: stop them when the
    # server runs in an interactive terminal, keep them otherwise (a service manager).
    keep_deployments: bool | None = None
    # A replica whose NIMBUS_HOME is gone and whose control plane has not answered for this
    # long exits: nothing is left to supervise it or to adopt it.
    replica_orphan_seconds: float = Field(default=300.0, gt=0)

    # Checks of untrusted input (an uploaded script compiled, a job's ONNX model run at
    # registration) run in a limited child process (nimbus.services.isolated), in the job
    # sandbox as check_user: "auto" (the system user nimbus-check) or a user name; a server
    # that cannot sandbox refuses checks. Only job_isolation "none" runs them unsandboxed,
    # as the server's own user. At most check_concurrency at a time.
    check_user: str = "auto"
    check_concurrency: int = Field(default=2, ge=1)
    check_memory_bytes: int = Field(default=2 * 1024**3, gt=0)  # address space of a check
    code_check_seconds: float = Field(default=30.0, gt=0)  # wall clock; CPU time as much
    model_check_seconds: float = Field(default=30.0, gt=0)
    # Jobs' download caches (cache/<tenant>/): all tenants' together stay under
    # cache_max_bytes, the least recently used files removed by a sweep every
    # cache_sweep_seconds (nimbus.jobs.cache).
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    cache_sweep_seconds: float = Field(default=300.0, gt=0)
    # The blob store's garbage (nimbus.services.garbage): every blob_sweep_seconds, upload
    # pins older than blob_grace_seconds are dropped (taken for crashed uploads'; an upload
    # still running then fails with 409 and is retried), and blobs nothing has referred to
    # for blob_grace_seconds are deleted; the grace must exceed the longest upload's pin to
    # commit (storing its files). Staging files and work directories untouched for
    # staging_grace_seconds go too: it must exceed the longest upload's receive + ingest.
    blob_grace_seconds: float = Field(default=6 * 3600.0, ge=0)
    blob_sweep_seconds: float = Field(default=600.0, gt=0)
    staging_grace_seconds: float = Field(default=6 * 3600.0, ge=0)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    def encryption_master_key(self) -> bytes | None:
        """The master key of encryption at rest (None: off), from ``encryption_key`` or the
        file ``encryption_key_file`` names; InvalidInput, one clear line, when unusable."""
        if self.encryption_key is not None and self.encryption_key_file is not None:
            raise InvalidInput("set NIMBUS_ENCRYPTION_KEY or NIMBUS_ENCRYPTION_KEY_FILE, not both")
        if self.encryption_key_file is not None:
            path = self.encryption_key_file.expanduser()
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(
                    f"NIMBUS_ENCRYPTION_KEY_FILE {str(path)!r} cannot be read: {exc}"
                ) from None
            return parse_master_key(text, f"NIMBUS_ENCRYPTION_KEY_FILE {str(path)!r}")
        if self.encryption_key is not None:
            return parse_master_key(self.encryption_key.get_secret_value())
        return None

    @property
    def resolved_database_url(self) -> str:
        """The metadata store URL: SQLite under NIMBUS_HOME unless one is given."""
        return self.database_url or f"sqlite:///{self.home / 'nimbus.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """The blob store URL: a local directory under NIMBUS_HOME unless one is given."""
        return self.storage_url or f"file://{self.home / 'blobs'}"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def jobs_dir(self) -> Path:
        """Work directories of attempts: ``jobs/<job id>/<attempt id>``."""
        return self.home / "jobs"

    @property
    def cache_dir(self) -> Path:
        """Blobs jobs downloaded, keyed by hash, shared by every job of this node."""
        return self.home / "cache"

    @property
    def envs_dir(self) -> Path:
        """Built job environments: ``envs/<content hash>``, read-only to jobs."""
        return self.home / "envs"

    @property
    def job_api_dir(self) -> Path:
        """The control plane's job API socket (``job-api.sock``), bound into sandboxes."""
        return self.home / "run"

    @property
    def deployments_dir(self) -> Path:
        """Model copies, token files and replica logs of deployments:
        ``deployments/<tenant>/<name>/``."""
        return self.home / "deployments"


def parse_master_key(text: str, source: str = "NIMBUS_ENCRYPTION_KEY") -> bytes:
    """The 32 bytes of a base64 master key; InvalidInput naming ``source`` otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"{source} is not base64: make a key with `openssl rand -base64 32`"
        ) from None
    if len(key) != MASTER_KEY_BYTES:
        raise InvalidInput(
            f"{source} holds {len(key)} bytes, not {MASTER_KEY_BYTES}: make a key with "
            "`openssl rand -base64 32`"
        )
    return key


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, with explicit overrides winning."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)  # type: ignore[arg-type]
