"""Per-tenant quotas: ``/quotas`` and ``/quotas/{tenant}``."""

from __future__ import annotations

from pydantic import Field

from nimbus.names import MAX_INT64
from nimbus.wire.base import Request, Response


class QuotaLimits(Response):
    """The limits in force (the tenant's own, else the server's defaults); null: none."""

    jobs: int | None  # queued + running jobs
    deployments: int | None
    replicas: int | None  # across all the tenant's deployments
    bytes: int | None  # stored by datasets, code and job artifacts


class QuotaUsage(Response):
    """What the tenant holds now, in the same units."""

    jobs: int
    deployments: int
    replicas: int
    bytes: int


class Quotas(Response):
    """``GET /quotas[/{tenant}]`` and the answer to ``PUT``."""

    tenant: str
    limits: QuotaLimits
    usage: QuotaUsage


class SetQuotas(Request):
    """``PUT /quotas[/{tenant}]``: the limits to change; a field left out is kept, a null
    one goes back to the server's default."""

    jobs: int | None = Field(default=None, ge=0, le=MAX_INT64)
    deployments: int | None = Field(default=None, ge=0, le=MAX_INT64)
    replicas: int | None = Field(default=None, ge=0, le=MAX_INT64)
    bytes: int | None = Field(default=None, ge=0, le=MAX_INT64)
