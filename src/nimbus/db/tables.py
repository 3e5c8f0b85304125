"""SQLAlchemy tables of the metadata store. Migrations in ``migrations/`` create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Highest version number ever given out, so a deleted version's number is never reused.
    last_version: Mapped[int] = mapped_column(default=0, server_default="0")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "content_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))
    source_hash: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    info: Mapped[dict[str, Any]]
    files: Mapped[dict[str, Any]]
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # What a person wrote for the datasheet (migration 0021): motivation, composition,
    # collection_process, uses, license, updated_at, updated_by. Null until written.
    datasheet: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class BlobRefRow(Base):
    """Which record holds which blob, so a blob is deleted only when nothing refers to it."""

    __tablename__ = "blob_refs"
    __table_args__ = (Index("ix_blob_refs_owner", "owner_kind", "owner_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(80), index=True)
    owner_kind: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[int]
    # When the reference was added (migration 0007): an upload's pin older than the grace
    # period is taken for one left by a crash. Null only for rows of code older than 0007.
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    # Who holds a claim (migration 0011): the control plane, its machine and process, so a
    # claim left by a crashed one is dropped at once where that is provable. Null otherwise.
    holder_plane: Mapped[str | None] = mapped_column(String(128))
    holder_host: Mapped[str | None] = mapped_column(String(255))
    holder_pid: Mapped[int | None]


class BlobOrphanRow(Base):
    """A blob of the store that the garbage sweeper found with no reference, and when it
    first did (migration 0007); deleted one grace period later if still unreferenced."""

    __tablename__ = "blob_orphans"

    blob_key: Mapped[str] = mapped_column(String(80), primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    # Ids only grow (migration 0020): SQLite otherwise hands out max(id) + 1, and once the
    # retention sweep deleted the newest events, their ids came back for new ones (a
    # reader paging with ``before=id`` or keeping ids would mix two events up).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    token_id: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    resource: Mapped[str] = mapped_column(String(512))
    status: Mapped[int]
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- Training jobs (migration 0002) ------------------------------------------------------


class JobRow(Base):
    """A job: what the user asked to run, its state and its current attempt."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_queue", "state", "priority", "created_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        # Migration 0012: the queued jobs by group (tenant, resources), each group in the
        # policy's order; the claim's skip scan seeks group by group (nimbus.db.queue_read).
        Index(
            "ix_jobs_queued_groups",
            "state",
            "tenant_id",
            "cpus",
            "gpus",
            "memory_bytes",
            "workers",
            text("priority DESC"),
            "created_at",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        # Migration 0016: the console's jobs list, filtered by one of these, newest first.
        Index("ix_jobs_tenant_state", "tenant_id", "state", "created_at"),
        Index("ix_jobs_tenant_model", "tenant_id", "model", "created_at"),
        Index("ix_jobs_tenant_dataset", "tenant_id", "dataset_name", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    spec: Mapped[dict[str, Any]]
    # Migration 0016: the spec's model and dataset (NAME:V) as columns, for the list's filters.
    model: Mapped[str | None] = mapped_column(String(255))
    dataset_name: Mapped[str | None] = mapped_column(String(255))
    dataset_version: Mapped[int | None]
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    cpus: Mapped[float] = mapped_column(Float)
    gpus: Mapped[int]
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    workers: Mapped[int]
    attempts: Mapped[int]
    current_attempt_id: Mapped[str | None] = mapped_column(String(32))
    max_retries: Mapped[int]
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    log_seq: Mapped[int] = mapped_column(BigInteger)  # last log chunk's seq, bumped under lock
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(32))
    # Migration 0003: what the job reads, resolved at submit (a snapshot of the dataset
    # version, the code artifact), and the latest progress its job process reported.
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Migration 0023: the pins its requirements resolved to, recorded by its first attempt
    # that resolved them (a JSON list): every later attempt installs exactly these.
    environment_lock: Mapped[list[str] | None] = mapped_column(JSON)


class JobAttemptRow(Base):
    """One execution of a job, with its lease and its job-scoped token's hash."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        Index("ix_job_attempts_lease", "state", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None]
    exit_signal: Mapped[int | None]
    exit_reason: Mapped[str | None] = mapped_column(Text)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # JSON: [{"rank", "node", "address"}] where each worker ran (the Ray executor's nodes)
    workers: Mapped[str | None] = mapped_column(Text)


class JobMetricRow(Base):
    __tablename__ = "job_metrics"
    # Migration 0016: one job's series of one metric, in order (its best or last value).
    __table_args__ = (
        Index("ix_job_metrics_job_name", "job_id", "name", "attempt_number", "step", "value"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt_number: Mapped[int]
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobLogRow(Base):
    """A chunk of a job's output; ``seq`` grows by one per chunk within a job."""

    __tablename__ = "job_logs"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_logs_job_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt_number: Mapped[int]
    seq: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobCheckpointRow(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt_number: Mapped[int]
    epoch: Mapped[int | None]
    step: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(80))
    complete: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobArtifactRow(Base):
    __tablename__ = "job_artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt_number: Mapped[int]
    name: Mapped[str] = mapped_column(String(255))
    blob_key: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- Code artifacts (migration 0003) -----------------------------------------------------


class CodeArtifactRow(Base):
    """A training script (``.py``) or code directory (``.tar``) a tenant uploaded; its blob
    is held by a blob reference owned by this row."""

    __tablename__ = "code_artifacts"
    __table_args__ = (UniqueConstraint("tenant_id", "blob_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    blob_key: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(8))  # "py" or "tar"
    entry: Mapped[str] = mapped_column(String(255))  # the script to run
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- Model registry and deployments (migration 0004) -------------------------------------


class ModelRow(Base):
    """A registered model: a named series of immutable versions, per tenant."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    # Highest version number ever given out: a deleted version's number is never reused.
    last_version: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelVersionRow(Base):
    """One registered version: the model files (held by blob references owned by this row,
    so deleting the job keeps them) and the lineage and evaluation of the job it came from."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int]
    # No FK: jobs may go. Null for a version imported from an ONNX file (migration 0018).
    job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    dataset: Mapped[dict[str, Any]]  # {"name", "version", "content_hash"}
    code_hash: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    seed: Mapped[int | None] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]]
    files: Mapped[dict[str, Any]]  # {file name: {"key", "size"}}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(32))
    # What a person wrote for the model card (migration 0014): description, intended_use,
    # limitations, ethical_considerations, updated_at, updated_by. Null until written.
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ModelAliasRow(Base):
    """An alias (``production``) naming one version of a model."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelAliasEventRow(Base):
    """One move of an alias: set (``from_version`` null), moved, or removed (``version``
    null, when its version was deleted)."""

    __tablename__ = "model_alias_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None]
    from_version: Mapped[int | None]
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str | None] = mapped_column(String(32))


class DeploymentRow(Base):
    """A served model version. ``owner`` is the control-plane instance supervising its
    replicas; ``port``, ``pids`` and ``status`` are what it needs to adopt them after a
    restart, kept fresh while it runs."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    model_ref: Mapped[str] = mapped_column(String(160))  # as asked: "digits@production"
    # The version served before the last model change, pinned ("digits:3"; migration 0017):
    # where a rollback goes back to.
    previous_model_ref: Mapped[str | None] = mapped_column(String(160), nullable=True)
    replicas: Mapped[int]
    max_batch_size: Mapped[int]
    max_delay_ms: Mapped[float] = mapped_column(Float)
    runtime: Mapped[str] = mapped_column(String(16))
    public: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))
    # Per-request caps of its replicas (migration 0006); None: the replica's defaults.
    max_batch_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_tensor_elements: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    port: Mapped[int | None]
    pids: Mapped[list[Any]]
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(32))


# --- Tenant quotas (migration 0005) ------------------------------------------------------


class TenantQuotaRow(Base):
    """What a tenant may hold at once; a null limit is no limit (or the server's default)."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    jobs: Mapped[int | None]  # queued + running
    deployments: Mapped[int | None]
    replicas: Mapped[int | None]  # across all deployments
    bytes: Mapped[int | None] = mapped_column(BigInteger)  # datasets + code + artifacts
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str | None] = mapped_column(String(32))


class EncryptionKeyRow(Base):
    """A tenant's data key for encryption at rest, wrapped under the master key
    ``master_key_id`` (:mod:`nimbus.storage.keyring`); never stored in the clear."""

    __tablename__ = "encryption_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), unique=True)
    master_key_id: Mapped[str] = mapped_column(String(16), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    rewrapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- Several control planes (migration 0009) ----------------------------------------------


class ControlPlaneRow(Base):
    """A control plane (``nimbus server``) sharing this metadata store: where it answers,
    what it runs jobs with, and when it last said it was alive."""

    __tablename__ = "control_planes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # its instance id
    url: Mapped[str] = mapped_column(String(300))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    executor: Mapped[str] = mapped_column(String(32))
    capacity: Mapped[dict[str, Any]]  # {"cpus", "gpus", "memory_bytes"} of its node
    jobs_dir: Mapped[str] = mapped_column(Text)  # where its attempts' processes work
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaderLeaseRow(Base):
    """Who leads (one row, ``scheduler``): ``holder`` until ``expires_at``; ``epoch`` grows
    by one at every change of holder and fences every write of the scheduler."""

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    epoch: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- Studies (migration 0013) -------------------------------------------------------------


class StudyRow(Base):
    """A hyperparameter study: its search (space, metric, sampler, pruner, budget), the job
    its trials run (a template spec), and its state. Its trials are :class:`StudyTrialRow`."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    state: Mapped[str] = mapped_column(String(16), index=True)
    # {"space", "metric", "direction", "sampler", "pruner", "seed", "trials", "parallel",
    # "timeout_seconds", "register"}: what was asked, checked at create
    search: Mapped[dict[str, Any]]
    job: Mapped[dict[str, Any]]  # the trials' job spec, but for the searched parameters
    best_trial: Mapped[int | None]
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)  # why it ended, in words


class StudyTrialRow(Base):
    """One trial of a study: the parameters it was given and the job that runs them. Its
    number is unique in the study, so a trial is never recorded twice (a decision repeated
    after a crash asks for the same number again and finds it taken)."""

    __tablename__ = "study_trials"

    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    params: Mapped[dict[str, Any]]  # the searched parameters it was given
    state: Mapped[str] = mapped_column(String(16))  # nimbus.studies.search.TrialState
    value: Mapped[float | None] = mapped_column(Float)
    pruned_step: Mapped[int | None]  # the step (epoch) at which it was pruned
    system_attrs: Mapped[dict[str, Any]]  # Optuna's notes on it (grid point, rungs)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsoleSessionRow(Base):
    """A browser's sign-in to the console, or a one-time sign-in link (``nimbus ui``), both
    standing for one API token: the token's role, tenant, revocation and expiry apply to
    every request. Only the hash of the cookie's or link's secret is stored."""

    __tablename__ = "console_sessions"

    secret_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "session" or "link"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # signed out, link used
