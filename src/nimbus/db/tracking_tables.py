"""Tables of MLflow-compatible tracking (:mod:`nimbus.services.tracking`): experiments, runs
with their params, tags, metric points and artifacts, and the MLflow model registry's
registered models and versions. Migration 0019 creates them.

They sit beside the job tables rather than in them: an MLflow run is logged by a program
Nimbus does not run (no attempts, leases or resources), and its metric points carry
MLflow's millisecond timestamps, which ``job_metrics`` (one row per step of an attempt)
does not. A Nimbus job is still readable as a run: the service maps it on the way out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from nimbus.db.tables import Base, UTCDateTime


class ExperimentRow(Base):
    __tablename__ = "tracking_experiments"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    lifecycle_stage: Mapped[str] = mapped_column(String(16))
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunRow(Base):
    __tablename__ = "tracking_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("tracking_experiments.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(256))
    start_time: Mapped[int] = mapped_column(BigInteger)  # milliseconds since the epoch
    end_time: Mapped[int | None] = mapped_column(BigInteger)
    lifecycle_stage: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str | None] = mapped_column(String(32))  # the token's id


class RunParamRow(Base):
    __tablename__ = "tracking_params"

    run_id: Mapped[str] = mapped_column(ForeignKey("tracking_runs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunTagRow(Base):
    __tablename__ = "tracking_tags"

    run_id: Mapped[str] = mapped_column(ForeignKey("tracking_runs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RunMetricRow(Base):
    __tablename__ = "tracking_metrics"
    __table_args__ = (Index("ix_tracking_metrics_run_key", "run_id", "key"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("tracking_runs.id"))
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[int] = mapped_column(BigInteger)  # milliseconds since the epoch
    step: Mapped[int] = mapped_column(BigInteger)


class RunArtifactRow(Base):
    __tablename__ = "tracking_artifacts"
    __table_args__ = (UniqueConstraint("run_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("tracking_runs.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))  # relative to the run's artifact root
    blob_key: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RegisteredModelRow(Base):
    __tablename__ = "tracking_models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    aliases: Mapped[dict[str, Any]] = mapped_column(JSON)  # alias -> version number
    last_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ModelVersionRow(Base):
    __tablename__ = "tracking_model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("tracking_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
