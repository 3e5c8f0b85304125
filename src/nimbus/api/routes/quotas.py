"""Per-tenant quotas: admins see their tenant's, operators see and set any tenant's."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin
from nimbus.api.state import services_of
from nimbus.wire.quotas import Quotas, SetQuotas

router = APIRouter(tags=["quotas"])


@router.get("/quotas", response_model=Quotas)
def show_own_quotas(principal: Admin, request: Request) -> Quotas:
    """The caller's tenant's limits and what it uses now."""
    return services_of(request).quotas.show(principal)


@router.get("/quotas/{tenant}", response_model=Quotas)
def show_quotas(tenant: str, principal: Admin, request: Request) -> Quotas:
    """A tenant's limits and usage (another tenant's: operators only)."""
    return services_of(request).quotas.show(principal, tenant)


@router.put("/quotas", response_model=Quotas)
def set_own_quotas(body: SetQuotas, principal: Admin, request: Request) -> Quotas:
    """Set limits of the caller's tenant (operators only)."""
    return services_of(request).quotas.set(principal, None, body)


@router.put("/quotas/{tenant}", response_model=Quotas)
def set_quotas(tenant: str, body: SetQuotas, principal: Admin, request: Request) -> Quotas:
    """Set limits of a tenant (operators only); fields left out are kept."""
    return services_of(request).quotas.set(principal, tenant, body)
