"""Repository of the MLflow model registry: registered models (with their tags and aliases)
and their versions (tables in :mod:`nimbus.db.tracking_tables`). Scoped by tenant.

This registry keeps what an MLflow client records (a name, a version number, the source URI
of the files); Nimbus's own registry (:mod:`nimbus.db.registry`) holds servable models."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nimbus.db.tracking import conflict_on_race
from nimbus.db.tracking_tables import ModelVersionRow, RegisteredModelRow


def create_model(
    session: Session,
    tenant_id: int,
    name: str,
    description: str,
    tags: dict[str, str],
    now: datetime,
) -> RegisteredModelRow:
    """A new registered model; Conflict when the tenant has one of that name."""
    row = RegisteredModelRow(
        tenant_id=tenant_id,
        name=name,
        description=description,
        tags=tags,
        aliases={},
        last_version=0,
        created_at=now,
        updated_at=now,
    )
    with conflict_on_race(session, f"registered model {name!r} already exists"):
        session.add(row)
    return row


def model(session: Session, tenant_id: int, name: str) -> RegisteredModelRow | None:
    return session.scalars(
        select(RegisteredModelRow).where(
            RegisteredModelRow.tenant_id == tenant_id, RegisteredModelRow.name == name
        )
    ).first()


def models(session: Session, tenant_id: int) -> list[RegisteredModelRow]:
    return list(
        session.scalars(
            select(RegisteredModelRow)
            .where(RegisteredModelRow.tenant_id == tenant_id)
            .order_by(RegisteredModelRow.name)
        )
    )


def create_version(
    session: Session,
    model_row: RegisteredModelRow,
    source: str,
    run_id: str | None,
    description: str,
    tags: dict[str, str],
    now: datetime,
) -> ModelVersionRow:
    """The model's next version; numbers are handed out under the model row's update, so
    two clients registering at once get different ones."""
    number = session.execute(
        update(RegisteredModelRow)
        .where(RegisteredModelRow.id == model_row.id)
        .values(last_version=RegisteredModelRow.last_version + 1, updated_at=now)
        .returning(RegisteredModelRow.last_version)
    ).scalar_one()
    row = ModelVersionRow(
        model_id=model_row.id,
        version=int(number),
        source=source,
        run_id=run_id,
        description=description,
        tags=tags,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def version(session: Session, model_id: int, number: int) -> ModelVersionRow | None:
    return session.scalars(
        select(ModelVersionRow).where(
            ModelVersionRow.model_id == model_id, ModelVersionRow.version == number
        )
    ).first()


def versions(session: Session, model_ids: list[int]) -> list[ModelVersionRow]:
    return list(
        session.scalars(
            select(ModelVersionRow)
            .where(ModelVersionRow.model_id.in_(model_ids))
            .order_by(ModelVersionRow.model_id, ModelVersionRow.version.desc())
        )
    )


def set_aliases(
    session: Session, model_row: RegisteredModelRow, aliases: dict[str, int], now: datetime
) -> None:
    model_row.aliases = dict(aliases)
    model_row.updated_at = now
    session.flush()
