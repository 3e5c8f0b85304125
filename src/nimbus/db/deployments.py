"""Deployment repository: the deployments of a tenant and what their supervisor persists."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from nimbus.db.tables import DeploymentRow, ModelRow, ModelVersionRow, Tenant, Token
from nimbus.security import as_utc

STOPPED = "stopped"


def get(session: Session, tenant_id: int, name: str) -> DeploymentRow | None:
    query = select(DeploymentRow).where(
        DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name
    )
    return session.scalars(query).first()


def list_for_tenant(session: Session, tenant_id: int) -> list[DeploymentRow]:
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.tenant_id == tenant_id)
        .order_by(DeploymentRow.name)
    )
    return list(session.scalars(query))


def create(session: Session, **fields: Any) -> DeploymentRow:
    row = DeploymentRow(**fields)
    session.add(row)
    session.flush()
    return row


def delete_row(session: Session, deployment_id: int) -> None:
    session.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment_id))


def save_status(
    session: Session, deployment_id: int, status: dict[str, Any], now: datetime
) -> None:
    """Persist a supervisor status (``DeploymentStatus.to_dict()``): state, port, pids."""
    pids = [r["pid"] for r in status.get("replicas", []) if r.get("pid") is not None]
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .values(
            state=status["state"], port=status["port"], pids=pids, status=status, updated_at=now
        )
    )


def set_state(session: Session, deployment_id: int, state: str, now: datetime) -> None:
    session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .values(state=state, updated_at=now)
    )


def users_of_version(session: Session, version_id: int) -> list[str]:
    """Names of the deployments serving model version ``version_id``."""
    query = select(DeploymentRow.name).where(DeploymentRow.model_version_id == version_id)
    return sorted(session.scalars(query))


def owned_by(session: Session, owner: str) -> list[tuple[DeploymentRow, str]]:
    """The deployments ``owner`` supervises that are not stopped, with their tenant's name."""
    query = (
        select(DeploymentRow, Tenant.name)
        .join(Tenant, Tenant.id == DeploymentRow.tenant_id)
        .where(DeploymentRow.owner == owner, DeploymentRow.state != STOPPED)
        .order_by(DeploymentRow.id)
    )
    return [(row, tenant) for row, tenant in session.execute(query).tuples()]


def reassign(session: Session, old_owner: str, new_owner: str) -> list[int]:
    """Give ``new_owner`` the deployments ``old_owner`` supervised (not stopped); returns
    their ids. Rows are locked first: of two control planes taking over at once, one gets
    them and the other none."""
    query = (
        select(DeploymentRow.id)
        .where(DeploymentRow.owner == old_owner, DeploymentRow.state != STOPPED)
        .with_for_update()
    )
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id.in_(ids), DeploymentRow.owner == old_owner)
            .values(owner=new_owner)
        )
    return ids


def model_version_of(
    session: Session, rows: Iterable[DeploymentRow]
) -> dict[int, tuple[ModelVersionRow, ModelRow]]:
    """The model version (and its model) each deployment serves, by version id."""
    ids = sorted({row.model_version_id for row in rows})
    if not ids:
        return {}
    query = (
        select(ModelVersionRow, ModelRow)
        .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        .where(ModelVersionRow.id.in_(ids))
    )
    return {v.id: (v, m) for v, m in session.execute(query).tuples()}


def live_token_hashes(
    session: Session, tenant_ids: Iterable[int], now: datetime
) -> dict[int, set[str]]:
    """Hashes of each tenant's usable tokens (any role): not revoked, not expired."""
    wanted = sorted(set(tenant_ids))
    found: dict[int, set[str]] = {tenant_id: set() for tenant_id in wanted}
    if not wanted:
        return found
    query = select(Token.tenant_id, Token.token_hash, Token.expires_at).where(
        Token.tenant_id.in_(wanted), Token.revoked_at.is_(None)
    )
    for tenant_id, token_hash, expires_at in session.execute(query):
        if expires_at is None or as_utc(expires_at) > as_utc(now):
            found[tenant_id].add(token_hash)
    return found
