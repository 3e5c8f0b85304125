"""AutoML's ``register``: the server registers an AutoML job's winner when the job succeeds.

A job submitted with ``params.register = NAME`` gets a pending row in its submit transaction
(:mod:`nimbus.db.automl`). :meth:`AutomlRegistrations.settle`, run by the scheduler's leader
at each studies tick, settles the rows of ended jobs: a succeeded job's model becomes a new
version of ``NAME`` (registered for the job's submitter, with its lineage and a model card
that starts with the leaderboard's summary); a job that did not succeed registers nothing.

Exactly once across crashes: registering is idempotent per job (a second call returns the
version the first made), and the row's end, the audit event and the note on the job
(``evaluation.automl.registered``) are written in one transaction, under the row's lock,
only while the row is still pending. A control plane that dies between the registration
and that transaction leaves the row pending: the next leader's call finds the version made
and writes the rest, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import audit as audit_repo
from nimbus.db import automl as repo
from nimbus.db.engine import Database
from nimbus.db.tables import JobRow
from nimbus.errors import Conflict, NimbusError
from nimbus.jobs.domain import JobState
from nimbus.security import Principal
from nimbus.services.models import RegisterResult
from nimbus.services.tokens import acting_member
from nimbus.ticker import Ticker
from nimbus.wire.cards import CardText

log = logging.getLogger(__name__)
CARD_ROWS = 5  # leaderboard rows in the model card's description

Register = Callable[[Principal, str, str, CardText | None], RegisterResult]


class AutomlRegistrations:
    """Registers the winners of AutoML jobs that asked for it (see the module's text)."""

    def __init__(
        self,
        db: Database,
        register: Register,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db, self.register, self.clock = db, register, clock

    def settle(self) -> int:
        """One round: settle every pending registration whose job has ended; how many."""
        with self.db.session() as session:
            due = repo.due(session)
        settled = 0
        for job_id in due:
            try:
                settled += self.settle_one(job_id)
            except Exception:  # the store or the database: the next round tries again
                log.exception("automl job %s: registering its model failed; will retry", job_id)
        return settled

    def settle_one(self, job_id: str) -> bool:
        """Settle ``job_id``'s registration (its job ended); False if it was not pending."""
        with self.db.session() as session:
            row = repo.get(session, job_id)
            job = session.get(JobRow, job_id)
            if row is None or row.state != repo.PENDING or job is None:
                return False
            name, state = row.name, JobState(job.state)
            principal = _submitter(session, job)
            summary = ((job.result or {}).get("evaluation") or {}).get("automl") or {}
        if state is not JobState.SUCCEEDED:
            reason = f"the job {state.value}: nothing to register"
            return self._finish(job_id, principal, repo.SKIPPED, {"model": name, "error": reason})
        try:
            done = self.register(principal, name, job_id, CardText(description=card(summary)))
        except Conflict:
            raise  # a concurrent change of the model: the next round tries again
        except NimbusError as exc:
            refused: dict[str, Any] = {"model": name, "error": exc.message}
            return self._finish(job_id, principal, repo.FAILED, refused, status=exc.status)
        version = done.version.version
        note: dict[str, Any] = {"model": name, "version": version, "created": done.created}
        return self._finish(job_id, principal, repo.REGISTERED, note, status=201)

    def _finish(
        self,
        job_id: str,
        principal: Principal,
        state: str,
        note: dict[str, Any],
        *,
        status: int = 200,
    ) -> bool:
        """End the row, note the outcome on the job and audit it, in one transaction (see
        the module's text); False if another round ended it first."""
        with self.db.session(write=True) as session:
            row = repo.get(session, job_id, lock=True)
            if row is None or row.state != repo.PENDING:
                return False
            repo.settle(
                session,
                row,
                state,
                self.clock(),
                version=note.get("version"),
                reason=note.get("error"),
            )
            if state != repo.SKIPPED:  # a job that did not succeed has no leaderboard
                repo.note_on_job(session, job_id, note)
                audit_repo.record(
                    session,
                    tenant_id=principal.tenant_id,
                    token_id=principal.token_id or None,
                    actor=principal.token_name,
                    action="POST",
                    resource=f"/api/v1/models/{note['model']}/versions",
                    status=status,
                    detail={"job": job_id, "by": "automl", **note},
                )
        log.info("automl job %s: registration %s: %s", job_id, state, note)
        return True


def _submitter(session: Session, job: JobRow) -> Principal:
    """Who registers: the job's submitter's token, as a member of its tenant (a viewer
    cannot submit, so it was at least one)."""
    return acting_member(session, job.tenant_id, job.created_by, f"automl job {job.id}")


def card(summary: dict[str, Any]) -> str:
    """The model card's opening text: how the AutoML search chose this model."""
    best = summary.get("best") or {}
    if not best:
        return "Chosen by an AutoML job."
    lines = [
        f"Chosen by an AutoML job: {summary.get('trials')} trials in "
        f"{summary.get('search_seconds')} s of a {summary.get('budget_seconds')} s budget, "
        f"{summary.get('metric')} on {summary.get('validation')}.",
        f"Winner: trial {best.get('trial')}, {best.get('family')} {best.get('params')}, "
        f"score {best.get('score')}.",
        "Leaderboard (best first):",
    ]
    for row in (summary.get("leaderboard") or [])[:CARD_ROWS]:
        lines.append(
            f"- trial {row.get('trial')}: {row.get('family')} {row.get('params')}: "
            f"{row.get('score')}"
        )
    return "\n".join(lines)


def automl_loop(
    registrations: AutomlRegistrations, leads: Callable[[], bool], interval: float
) -> Ticker:
    """Background work (see :class:`~nimbus.api.state.Background`): every ``interval``
    seconds, while ``leads()`` (this control plane leads the scheduler), one
    :meth:`AutomlRegistrations.settle` round."""

    def settle() -> None:
        if leads():
            registrations.settle()

    return Ticker("automl-registrations", interval, settle)
