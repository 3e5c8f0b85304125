"""Deployments on the wire: a deployment with its replicas, and the bodies that create or
update one (docs/api.md, "Deployments")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nimbus.wire.base import Request, Response, Timestamp

MAX_REPLICAS = 32
MAX_ROWS_CAP = 2**31 - 1
MAX_ELEMENTS_CAP = 2**40
CAPS_NOTE = "null: the replica's default (1024 rows, 16777216 elements)"
Runtime = Literal["onnx", "torch"]
RUNTIMES: tuple[Runtime, ...] = ("onnx", "torch")


class Replica(Response):
    """One serving process of a deployment."""

    index: int
    pid: int | None
    port: int | None = Field(description="Its private health port.")
    state: str = Field(description="starting | ready | unhealthy | draining | exited")
    restarts: int
    model_version: int | str = Field(description="The version it serves.")


class Deployment(Response):
    """A served model version: where it answers (OIP v2 under ``endpoint``), its replicas
    and its batching settings."""

    name: str
    model: str = Field(description="The model's name.")
    model_version: int
    model_ref: str = Field(description="The model reference as asked (NAME:V, NAME@ALIAS).")
    previous_model_ref: str | None = Field(
        description="The version served before the last model change (NAME:V): where "
        "POST /deployments/{name}/rollback goes back to.",
    )
    state: str = Field(description="pending | ready | degraded | failed | stopped")
    replicas: list[Replica]
    desired_replicas: int
    endpoint: str | None = Field(description="http://HOST:PORT; null until it has a port.")
    max_batch_size: int
    max_delay_ms: float
    runtime: str = Field(description="onnx | torch")
    public: bool = Field(description="Served without a token.")
    owner: str | None = Field(description="The control-plane instance supervising it.")
    created_at: Timestamp
    updated_at: Timestamp
    max_batch_rows: int | None = Field(
        description=f"Most rows one infer request may hold (413 past it); {CAPS_NOTE}."
    )
    max_tensor_elements: int | None = Field(
        description=f"Most elements of one input tensor (413 past it); {CAPS_NOTE}."
    )


class DeploymentList(Response):
    """``GET /deployments``."""

    deployments: list[Deployment]


class CreateDeployment(Request):
    """The body of ``POST /deployments``."""

    name: str = Field(min_length=1, max_length=63)
    model: str = Field(min_length=1, max_length=160)
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(2.0, ge=0, le=1000, allow_inf_nan=False)
    runtime: Runtime = "onnx"
    public: bool = False
    max_batch_rows: int | None = Field(None, ge=1, le=MAX_ROWS_CAP)
    max_tensor_elements: int | None = Field(None, ge=1, le=MAX_ELEMENTS_CAP)


class UpdateDeployment(Request):
    """The body of ``PATCH /deployments/{name}``: what changes."""

    model: str | None = Field(None, min_length=1, max_length=160)
    replicas: int | None = Field(None, ge=1, le=MAX_REPLICAS)
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_delay_ms: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    runtime: Runtime | None = None
    public: bool | None = None
    max_batch_rows: int | None = Field(None, ge=1, le=MAX_ROWS_CAP)
    max_tensor_elements: int | None = Field(None, ge=1, le=MAX_ELEMENTS_CAP)
