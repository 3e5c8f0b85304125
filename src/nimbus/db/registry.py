"""Model registry repository: models, their versions, aliases and the aliases' history.

Call the writing functions inside ``db.session(write=True)``; times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tables import ModelAliasEventRow, ModelAliasRow, ModelRow, ModelVersionRow


@dataclass(frozen=True)
class ModelSummary:
    id: int
    name: str
    created_at: datetime
    latest_version: int | None
    versions: int
    updated_at: datetime | None = None  # when its latest version was registered


def get_model(session: Session, tenant_id: int, name: str) -> ModelRow | None:
    query = select(ModelRow).where(ModelRow.tenant_id == tenant_id, ModelRow.name == name)
    return session.scalars(query).first()


def get_or_create_model(session: Session, tenant_id: int, name: str, now: datetime) -> ModelRow:
    """The tenant's model called ``name``, created if missing (safe under races)."""
    model = get_model(session, tenant_id, name)
    if model is not None:
        return model
    try:
        with session.begin_nested():
            model = ModelRow(tenant_id=tenant_id, name=name, last_version=0, created_at=now)
            session.add(model)
    except IntegrityError:
        model = get_model(session, tenant_id, name)
        if model is None:
            raise
    return model


def list_models(session: Session, tenant_id: int) -> list[ModelSummary]:
    """The tenant's models by name, with their latest version number and version count."""
    query = (
        select(
            ModelRow.id,
            ModelRow.name,
            ModelRow.created_at,
            func.max(ModelVersionRow.version),
            func.count(ModelVersionRow.id),
            func.max(ModelVersionRow.created_at),
        )
        .outerjoin(ModelVersionRow, ModelVersionRow.model_id == ModelRow.id)
        .where(ModelRow.tenant_id == tenant_id)
        .group_by(ModelRow.id, ModelRow.name, ModelRow.created_at)
        .order_by(ModelRow.name)
    )
    return [ModelSummary(*row) for row in session.execute(query).tuples()]


def allocate_version_number(session: Session, model: ModelRow) -> int:
    """Take the model's next version number (row-locks the model on PostgreSQL)."""
    session.execute(
        update(ModelRow)
        .where(ModelRow.id == model.id)
        .values(last_version=ModelRow.last_version + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(model, ["last_version"])
    return model.last_version


def create_version(session: Session, **fields: Any) -> ModelVersionRow:
    row = ModelVersionRow(**fields)
    session.add(row)
    session.flush()
    return row


def list_versions(
    session: Session,
    model_id: int,
    *,
    offset: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[ModelVersionRow]:
    """The model's versions by number (oldest first unless ``newest_first``), a page of
    ``limit`` from ``offset`` when ``limit`` is given."""
    order = ModelVersionRow.version.desc() if newest_first else ModelVersionRow.version
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == model_id).order_by(order)
    if limit is not None:
        query = query.offset(offset).limit(limit)
    return list(session.scalars(query))


def count_versions(session: Session, model_id: int) -> int:
    query = select(func.count()).where(ModelVersionRow.model_id == model_id)
    return int(session.scalar(query) or 0)


def get_version(session: Session, model_id: int, version: int | None) -> ModelVersionRow | None:
    """Version number ``version`` of the model, or its latest when ``version`` is None."""
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == model_id)
    if version is None:
        query = query.order_by(ModelVersionRow.version.desc()).limit(1)
    else:
        query = query.where(ModelVersionRow.version == version)
    return session.scalars(query).first()


def version_by_id(session: Session, version_id: int) -> tuple[ModelVersionRow, ModelRow] | None:
    found = session.execute(
        select(ModelVersionRow, ModelRow)
        .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        .where(ModelVersionRow.id == version_id)
    ).first()
    return None if found is None else (found[0], found[1])


def find_by_job(session: Session, model_id: int, job_id: str) -> ModelVersionRow | None:
    """The version of the model registered from ``job_id``, if any."""
    query = select(ModelVersionRow).where(
        ModelVersionRow.model_id == model_id, ModelVersionRow.job_id == job_id
    )
    return session.scalars(query).first()


def delete_version(session: Session, row: ModelVersionRow) -> None:
    session.execute(delete(ModelVersionRow).where(ModelVersionRow.id == row.id))
    session.flush()


# --- aliases ----------------------------------------------------------------------------


def aliases(session: Session, model_ids: list[int]) -> dict[int, dict[str, int]]:
    """``{model id: {alias: version}}`` for the given models."""
    found: dict[int, dict[str, int]] = {model_id: {} for model_id in model_ids}
    if model_ids:
        query = (
            select(ModelAliasRow.model_id, ModelAliasRow.alias, ModelAliasRow.version)
            .where(ModelAliasRow.model_id.in_(model_ids))
            .order_by(ModelAliasRow.alias)
        )
        for model_id, alias, version in session.execute(query):
            found[model_id][alias] = version
    return found


def alias_version(session: Session, model_id: int, alias: str) -> int | None:
    query = select(ModelAliasRow.version).where(
        ModelAliasRow.model_id == model_id, ModelAliasRow.alias == alias
    )
    return session.scalars(query).first()


def set_alias(
    session: Session, model_id: int, alias: str, version: int, by: str | None, now: datetime
) -> int | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before (None if it
    is new). A move is recorded in the history; setting it where it already is is not."""
    row = session.scalars(
        select(ModelAliasRow).where(
            ModelAliasRow.model_id == model_id, ModelAliasRow.alias == alias
        )
    ).first()
    before = row.version if row is not None else None
    if before == version:
        return before
    if row is None:
        session.add(ModelAliasRow(model_id=model_id, alias=alias, version=version, updated_at=now))
    else:
        row.version, row.updated_at = version, now
    _record(session, model_id, alias, version, before, by, now)
    return before


def remove_alias(
    session: Session, model_id: int, alias: str, by: str | None, now: datetime
) -> int | None:
    """Drop ``alias``; returns the version it named (None if there was no such alias)."""
    before = alias_version(session, model_id, alias)
    if before is not None:
        session.execute(
            delete(ModelAliasRow).where(
                ModelAliasRow.model_id == model_id, ModelAliasRow.alias == alias
            )
        )
        _record(session, model_id, alias, None, before, by, now)
    return before


def remove_aliases_to(
    session: Session, model_id: int, version: int, by: str | None, now: datetime
) -> list[str]:
    """Drop every alias naming ``version`` (it is being deleted); returns their names."""
    names = list(
        session.scalars(
            select(ModelAliasRow.alias).where(
                ModelAliasRow.model_id == model_id, ModelAliasRow.version == version
            )
        )
    )
    for alias in names:
        remove_alias(session, model_id, alias, by, now)
    return names


def alias_history(session: Session, model_id: int) -> list[ModelAliasEventRow]:
    """Every move of the model's aliases, oldest first."""
    query = (
        select(ModelAliasEventRow)
        .where(ModelAliasEventRow.model_id == model_id)
        .order_by(ModelAliasEventRow.at, ModelAliasEventRow.id)
    )
    return list(session.scalars(query))


def recent_alias_history(
    session: Session, model_id: int, limit: int
) -> tuple[list[ModelAliasEventRow], int]:
    """The model's ``limit`` latest alias moves, newest first, and how many there are."""
    where = ModelAliasEventRow.model_id == model_id
    query = (
        select(ModelAliasEventRow)
        .where(where)
        .order_by(ModelAliasEventRow.at.desc(), ModelAliasEventRow.id.desc())
        .limit(limit)
    )
    total = session.scalar(select(func.count()).where(where))
    return list(session.scalars(query)), int(total or 0)


def _record(
    session: Session,
    model_id: int,
    alias: str,
    version: int | None,
    before: int | None,
    by: str | None,
    now: datetime,
) -> None:
    session.add(
        ModelAliasEventRow(
            model_id=model_id, alias=alias, version=version, from_version=before, at=now, by=by
        )
    )
    session.flush()
