"""Studies repository: a study, its trials (one job each), their ends.

Every function takes a :class:`~sqlalchemy.orm.Session` and every time is passed in
(``now``); writes belong in ``db.session(write=True)``. A trial's number is its key in the
study: :func:`add_trial` of a number already taken records nothing and says so, which is how
a decision repeated after a crash finds its trial already there.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tables import StudyRow, StudyTrialRow
from nimbus.errors import NotFound
from nimbus.studies.search import TrialRecord, TrialState

RUNNING = "running"  # a study's state until it ends: succeeded, failed or cancelled


def new_study_id() -> str:
    return "std_" + secrets.token_hex(12)


def create(
    session: Session,
    *,
    tenant_id: int,
    search: Mapping[str, Any],
    job: Mapping[str, Any],
    created_by: str | None,
    now: datetime,
) -> StudyRow:
    row = StudyRow(
        id=new_study_id(),
        tenant_id=tenant_id,
        state=RUNNING,
        search=dict(search),
        job=dict(job),
        best_trial=None,
        created_by=created_by,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, tenant_id: int, study_id: str, *, lock: bool = False) -> StudyRow:
    """The tenant's study; another tenant's answers as none (404)."""
    query = select(StudyRow).where(StudyRow.id == study_id, StudyRow.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(f"no study {study_id}")
    return row


def list_for(session: Session, tenant_id: int, limit: int = 100) -> list[StudyRow]:
    """The tenant's studies, newest first."""
    query = (
        select(StudyRow)
        .where(StudyRow.tenant_id == tenant_id)
        .order_by(StudyRow.created_at.desc(), StudyRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def running(session: Session) -> list[StudyRow]:
    """Every tenant's studies still running (what the study loop drives), oldest first."""
    query = select(StudyRow).where(StudyRow.state == RUNNING).order_by(StudyRow.created_at)
    return list(session.scalars(query))


def end(session: Session, row: StudyRow, state: str, reason: str, now: datetime) -> None:
    if row.state != RUNNING:
        return
    row.state, row.reason, row.ended_at = state, reason, now


def add_trial(
    session: Session,
    study_id: str,
    number: int,
    *,
    job_id: str,
    params: Mapping[str, Any],
    system_attrs: Mapping[str, Any],
    now: datetime,
) -> StudyTrialRow | None:
    """Record trial ``number`` (its job submitted in the same transaction); None when the
    study has that number already (nothing is recorded)."""
    row = StudyTrialRow(
        study_id=study_id,
        number=number,
        job_id=job_id,
        params=dict(params),
        state=TrialState.RUNNING.value,
        system_attrs=dict(system_attrs),
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def running_trial_jobs(session: Session) -> dict[str, str]:
    """The job of every running trial (whatever its study), with its study's metric."""
    query = (
        select(StudyTrialRow.job_id, StudyRow.search)
        .join(StudyRow, StudyRow.id == StudyTrialRow.study_id)
        .where(StudyTrialRow.state == TrialState.RUNNING.value)
    )
    return {job_id: str(search["metric"]) for job_id, search in session.execute(query)}


def trials(session: Session, study_id: str) -> list[StudyTrialRow]:
    query = (
        select(StudyTrialRow)
        .where(StudyTrialRow.study_id == study_id)
        .order_by(StudyTrialRow.number)
    )
    return list(session.scalars(query))


def trials_of(session: Session, study_ids: list[str]) -> dict[str, list[StudyTrialRow]]:
    """The trials of several studies by study, in one query (lists of studies)."""
    found: dict[str, list[StudyTrialRow]] = {study_id: [] for study_id in study_ids}
    if study_ids:
        query = (
            select(StudyTrialRow)
            .where(StudyTrialRow.study_id.in_(study_ids))
            .order_by(StudyTrialRow.study_id, StudyTrialRow.number)
        )
        for row in session.scalars(query):
            found[row.study_id].append(row)
    return found


def trial_stats(
    session: Session, study_ids: list[str]
) -> dict[str, dict[str, tuple[int, float | None, float | None]]]:
    """Per study, per trial state: how many trials, their lowest and highest value (one
    aggregate query: a list of studies reads no trial rows)."""
    found: dict[str, dict[str, tuple[int, float | None, float | None]]] = {
        study_id: {} for study_id in study_ids
    }
    if study_ids:
        query = (
            select(
                StudyTrialRow.study_id,
                StudyTrialRow.state,
                func.count(),
                func.min(StudyTrialRow.value),
                func.max(StudyTrialRow.value),
            )
            .where(StudyTrialRow.study_id.in_(study_ids))
            .group_by(StudyTrialRow.study_id, StudyTrialRow.state)
        )
        for study_id, state, n, low, high in session.execute(query).tuples():
            found[study_id][state] = (int(n), low, high)
    return found


def count(session: Session, study_id: str) -> int:
    query = select(func.count()).where(StudyTrialRow.study_id == study_id)
    return int(session.scalar(query) or 0)


def end_trial(
    row: StudyTrialRow,
    state: TrialState,
    now: datetime,
    *,
    value: float | None = None,
    pruned_step: int | None = None,
) -> None:
    """A trial's end, once: its value when it completed, the value it was stopped at when
    pruned (never a score: the study's decisions read complete trials' values only), none
    when it failed."""
    if row.state != TrialState.RUNNING.value:
        return
    row.state = state.value
    row.value = value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    row.pruned_step = pruned_step if state is TrialState.PRUNED else None
    row.ended_at = now


def record(
    row: StudyTrialRow,
    intermediate: Mapping[int, float],
    tiebreak: Mapping[int, float] | None = None,
) -> TrialRecord:
    """What the study's decisions see of a trial (its metric per step from its job, and
    the other metric that breaks the pruner's ties)."""
    return TrialRecord(
        number=row.number,
        params=dict(row.params),
        state=TrialState(row.state),
        value=row.value if row.state == TrialState.COMPLETE.value else None,
        intermediate=dict(intermediate),
        system_attrs=dict(row.system_attrs),
        tiebreak=dict(tiebreak or {}),
    )
