"""Studies: hyperparameter searches whose trials are ordinary jobs.

A study is created by a member (its space checked against the model, its first trial's job
prepared as a submit would be, so every refusal comes at create). From then on
:meth:`StudyService.advance`, run by the scheduler's leader at each tick, drives every running
study from the metadata store alone: it ends the trials whose jobs ended (a value only from a
job that succeeded), prunes running trials the pruner gives up (their jobs cancelled), asks for
new trials up to the study's parallelism within the tenant's quota (each trial's job and row
written in one transaction), and ends the study when its trials are done or its time is up.
Nothing lives in memory between ticks: a control plane that dies mid-study leaves nothing for
the next leader to repair.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import job_details, job_outputs
from nimbus.db import jobs as jobs_repo
from nimbus.db import studies as repo
from nimbus.db.engine import Database
from nimbus.db.tables import StudyRow, StudyTrialRow
from nimbus.errors import InvalidInput, NimbusError
from nimbus.jobs.domain import JobState, parse_duration
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.jobs import JobService
from nimbus.services.tokens import acting_member
from nimbus.studies.search import (
    MIN_FOR_IMPORTANCE,
    SearchConfig,
    TrialRecord,
    TrialState,
    best,
    curve,
    final_value,
    grid_size,
    importances,
    next_params,
    prune_decision,
    tie_breaker,
)
from nimbus.studies.space import check_for_model, space_from_dict
from nimbus.ticker import Ticker
from nimbus.wire import studies as wire
from nimbus.wire.jobs import SubmitRequest

log = logging.getLogger(__name__)
IMPORTANCE_CACHE = 256  # studies' importances kept (each a few parameters' shares)
JOB_FIELDS = ("cpus", "gpus", "memory", "workers", "resources", "priority", "max_retries")


@dataclass(frozen=True)
class _Ending:
    state: str
    reason: str
    best: int | None
    register: tuple[Principal, str, str] | None  # who registers what name from which job


@dataclass(frozen=True)
class StudySummary:
    """A study as a list shows it: its row, its trials by state, its best complete value."""

    id: str
    state: str
    model: str
    dataset: str
    metric: str
    direction: str
    trials: int  # asked for
    created_at: datetime
    counts: dict[str, int]
    best_value: float | None

    @property
    def done(self) -> int:
        """Trials that ended (complete, pruned or failed)."""
        return sum(n for state, n in self.counts.items() if state != TrialState.RUNNING.value)


class _Taken(Exception):
    """The trial's number was taken meanwhile: its job's transaction is rolled back."""


def _config(search: dict[str, Any]) -> SearchConfig:
    return SearchConfig(
        space_from_dict(search["space"]),
        direction=search["direction"],
        sampler=search["sampler"],
        pruner=search["pruner"],
        seed=search.get("seed"),
        parallel=search["parallel"],
        trials=search["trials"],
    )


class StudyService:
    """Studies of every tenant; each public method acts for one principal, within its
    tenant, but :meth:`advance`, which the scheduler's leader runs for all."""

    def __init__(
        self,
        db: Database,
        jobs: JobService,
        *,
        register: Callable[[Principal, str, str], object] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db, self.jobs, self.clock = db, jobs, clock
        # ModelService.register: the best trial's model, when a study asks for it.
        self.register = register
        self._importances: OrderedDict[tuple[Any, ...], dict[str, float]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # Curves of trials that had ended by a round's start (their jobs write no more), by
        # study and trial number: a round reads only the running trials' (the rounds' loop
        # alone uses it, and keeps only the running studies').
        self._final: dict[str, dict[int, tuple[dict[int, float], dict[int, float]]]] = {}
        # The running trials' jobs as of the last round: an epoch one of them reports wakes
        # the loop (read by request threads, so replaced whole). See :meth:`watches`.
        self._watched: Mapping[str, str] = {}  # job id -> its study's metric
        # Told when a study was created: the loop starts its first trials now.
        self.on_created: list[Callable[[], object]] = []

    # -- create -------------------------------------------------------------------------

    def create(self, principal: Principal, request: wire.StudyRequest) -> wire.Study:
        """Check the whole search and the trials' job now: a bad space, sampler, pruner,
        metric or job option is a 400 naming it, and nothing is recorded."""
        require_role(principal, Role.MEMBER)
        if request.register_as is not None:
            if self.register is None:
                raise InvalidInput("this server cannot register models", field="register_as")
            validate_name(request.register_as, "model name")
        space = space_from_dict(request.params)
        check_for_model(space, request.model)
        search = {
            "space": space.to_dict(),
            "metric": request.metric,
            "direction": request.direction,
            "sampler": request.sampler,
            "pruner": request.pruner,
            "seed": request.seed,
            "trials": request.trials,
            "parallel": request.parallel,
            "timeout_seconds": (
                parse_duration(request.timeout) if request.timeout is not None else None
            ),
            "register": request.register_as,
        }
        config = _config(search)
        if request.sampler == "grid" and request.trials > grid_size(space):
            raise InvalidInput(
                f"the grid has {grid_size(space)} points: ask for at most that many trials",
                field="trials",
            )
        job = {
            "dataset": request.dataset,
            "model": request.model,
            **{name: getattr(request, name) for name in JOB_FIELDS},
        }
        # The first trial's job, prepared as a submit would be: the dataset, the model and
        # every job option are checked here, once (a trial then differs in its params only).
        first = next_params(config, [])
        prepared = self.jobs.prepare(principal, self._submit(job, first.params))
        job["dataset"] = prepared.spec.dataset  # pinned: every trial trains on this version
        with self.db.session(write=True) as session:
            row = repo.create(
                session,
                tenant_id=principal.tenant_id,
                search=search,
                job=job,
                created_by=principal.token_id,
                now=self.clock(),
            )
            view = self._view(session, row)
        for tell in self.on_created:
            tell()
        return view

    @staticmethod
    def _submit(job: dict[str, Any], params: dict[str, Any]) -> SubmitRequest:
        return SubmitRequest(**{**job, "params": params})

    # -- read ---------------------------------------------------------------------------

    def get(self, principal: Principal, study_id: str) -> wire.Study:
        with self.db.session() as session:
            return self._view(session, repo.get(session, principal.tenant_id, study_id))

    def list_studies(self, principal: Principal, limit: int = 100) -> wire.StudyList:
        with self.db.session() as session:
            rows = repo.list_for(session, principal.tenant_id, limit)
            trials = repo.trials_of(session, [row.id for row in rows])  # one query for all
            return wire.StudyList(studies=[self._view(session, r, trials[r.id]) for r in rows])

    def summaries(self, principal: Principal, limit: int = 100) -> list[StudySummary]:
        """The tenant's studies, newest first, with their trials counted by state and the
        best complete value: what a list shows, from one aggregate query over the trials."""
        with self.db.session() as session:
            rows = repo.list_for(session, principal.tenant_id, limit)
            stats = repo.trial_stats(session, [row.id for row in rows])
            found = []
            for row in rows:
                by_state = stats[row.id]
                _, low, high = by_state.get(TrialState.COMPLETE.value, (0, None, None))
                top = high if row.search["direction"] == "maximize" else low
                counts = {state: n for state, (n, _, _) in by_state.items()}
                found.append(
                    StudySummary(
                        id=row.id,
                        state=row.state,
                        model=row.job["model"],
                        dataset=row.job["dataset"],
                        metric=row.search["metric"],
                        direction=row.search["direction"],
                        trials=row.search["trials"],
                        created_at=row.created_at,
                        counts=counts,
                        best_value=top,
                    )
                )
            return found

    def trials(self, principal: Principal, study_id: str) -> wire.TrialList:
        with self.db.session() as session:
            row = repo.get(session, principal.tenant_id, study_id)
            return wire.TrialList(trials=[_trial(t) for t in repo.trials(session, row.id)])

    def importances(self, principal: Principal, study_id: str) -> wire.Importances:
        """fANOVA over the complete trials (seconds for a hundred): computed once for each
        set of complete trials, then read from a small cache until another completes."""
        with self.db.session() as session:
            row = repo.get(session, principal.tenant_id, study_id)
            records = [repo.record(t, {}) for t in repo.trials(session, row.id)]
            search = row.search
        done = tuple((r.number, r.value) for r in records if r.state is TrialState.COMPLETE)
        key = (study_id, done)
        with self._cache_lock:
            shares = self._importances.get(key)
        if shares is None:
            shares = importances(_config(search), records)
            with self._cache_lock:
                self._importances[key] = shares
                while len(self._importances) > IMPORTANCE_CACHE:
                    self._importances.popitem(last=False)
        return wire.Importances(
            importances=dict(shares), complete=len(done), needed=MIN_FOR_IMPORTANCE
        )

    def _view(
        self, session: Session, row: StudyRow, trials: list[StudyTrialRow] | None = None
    ) -> wire.Study:
        search, job = row.search, row.job
        if trials is None:
            trials = repo.trials(session, row.id)
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        found = best(search["direction"], [repo.record(t, {}) for t in trials])
        top = next((t for t in trials if found and t.number == found.number), None)
        return wire.Study(
            id=row.id,
            state=row.state,
            dataset=job["dataset"],
            model=job["model"],
            params=search["space"],
            metric=search["metric"],
            direction=search["direction"],
            trials=search["trials"],
            parallel=search["parallel"],
            sampler=search["sampler"],
            pruner=search["pruner"],
            seed=search.get("seed"),
            timeout_seconds=search.get("timeout_seconds"),
            register_as=search.get("register"),
            counts=counts,
            best=_trial(top) if top is not None else None,
            reason=row.reason,
            created_at=row.created_at,
            ended_at=row.ended_at,
        )

    # -- cancel -------------------------------------------------------------------------

    def cancel(self, principal: Principal, study_id: str) -> wire.Study:
        """End the study now: its running trials' jobs are cancelled, they end failed."""
        require_role(principal, Role.MEMBER)
        now = self.clock()
        with self.db.session(write=True) as session:
            row = repo.get(session, principal.tenant_id, study_id, lock=True)
            if row.state == repo.RUNNING:
                trials = repo.trials(session, row.id)
                self._stop_running(session, row, trials, now, "the study was cancelled")
                repo.end(session, row, "cancelled", f"cancelled by {principal.token_id}", now)
            return self._view(session, row)

    def _stop_running(
        self,
        session: Session,
        row: StudyRow,
        trials: list[StudyTrialRow],
        now: datetime,
        why: str,
    ) -> None:
        for trial in trials:
            if trial.state == TrialState.RUNNING.value:
                jobs_repo.request_cancel(session, trial.job_id, now)
                repo.end_trial(trial, TrialState.FAILED, now)
                log.info("study %s trial %d stopped: %s", row.id, trial.number, why)

    # -- the leader's loop ----------------------------------------------------------------

    def advance(self) -> None:
        """One round over every running study (the scheduler's leader, each tick). A study
        whose round fails is logged and tried again at the next."""
        with self.db.session() as session:
            ids = [(row.id, row.tenant_id) for row in repo.running(session)]
        running = {study_id for study_id, _ in ids}
        for gone in self._final.keys() - running:
            del self._final[gone]
        for study_id, tenant_id in ids:
            try:
                self._advance(study_id, tenant_id)
            except Exception:
                log.exception("study %s: its round failed", study_id)
        if not ids:  # no study runs: no trial to watch (and no query each tick)
            self._watched = {}
            return
        with self.db.session() as session:
            self._watched = repo.running_trial_jobs(session)

    def watches(self, job_id: str, metrics: Collection[str]) -> bool:
        """Whether ``metrics`` (names a job just reported) hold the metric of a study
        ``job_id`` ran a running trial of at the last round: that epoch may decide a
        pruning, so the job API wakes the loop for it (server.py) rather than leave it to
        the next tick. A job's other metrics (a loss per batch) wake nothing."""
        metric = self._watched.get(job_id)
        return metric is not None and metric in metrics

    def _advance(self, study_id: str, tenant_id: int) -> None:
        now = self.clock()
        with self.db.session(write=True) as session:
            row = repo.get(session, tenant_id, study_id, lock=True)
            if row.state != repo.RUNNING:
                return
            config = _config(row.search)
            trials, records = self._settle(session, row, config, now)
            timeout = row.search.get("timeout_seconds")
            ending: _Ending | None = None
            running = sum(1 for r in records if r.state is TrialState.RUNNING)
            total = row.search["trials"]
            if timeout is not None and now >= row.created_at + timedelta(seconds=timeout):
                self._stop_running(session, row, trials, now, "the study's time ran out")
                ending = self._ending(session, row, trials, f"its time ({timeout:g} s) ran out")
            elif len(records) >= total and running == 0:
                ending = self._ending(session, row, trials, "all its trials ended")
            wanted = (
                0 if ending is not None else min(config.parallel - running, total - len(records))
            )
            search, job = dict(row.search), dict(row.job)
            principal = self._principal_of(session, row)
        if ending is not None:
            self._end(study_id, tenant_id, ending)
            return
        for _ in range(max(0, wanted)):
            if not self._start_trial(study_id, search, job, principal, records):
                break

    def _settle(
        self, session: Session, row: StudyRow, config: SearchConfig, now: datetime
    ) -> tuple[list[StudyTrialRow], list[TrialRecord]]:
        """End the trials whose jobs ended, prune those the pruner gives up; the trials'
        rows and their records."""
        metric = row.search["metric"]
        trials = repo.trials(session, row.id)
        final = self._final.setdefault(row.id, {})
        curves: dict[int, dict[int, float]] = {}
        ties: dict[int, dict[int, float]] = {}
        for t in trials:
            if t.number in final:
                curves[t.number], ties[t.number] = final[t.number]
                continue
            curves[t.number] = self._curve(session, t.job_id, metric)
            ties[t.number] = self._tiebreak(session, t.job_id, metric)
            if t.state in (TrialState.COMPLETE.value, TrialState.FAILED.value):
                final[t.number] = curves[t.number], ties[t.number]  # its job had ended
        for trial in trials:
            if trial.state != TrialState.RUNNING.value:
                continue
            found = job_details.poll_state(session, trial.job_id)
            state = found[0] if found is not None else JobState.FAILED
            if state is JobState.SUCCEEDED:
                best_epoch = self._best_epoch(session, trial.job_id)
                value = final_value(curves[trial.number], best_epoch)
                ended = TrialState.COMPLETE if value is not None else TrialState.FAILED
                repo.end_trial(trial, ended, now, value=value)
            elif state in (JobState.FAILED, JobState.CANCELLED):
                repo.end_trial(trial, TrialState.FAILED, now)
        records = [repo.record(t, curves[t.number], ties[t.number]) for t in trials]
        for index, trial in enumerate(trials):
            if trial.state != TrialState.RUNNING.value or not curves[trial.number]:
                continue
            decision = prune_decision(config, records, trial.number)
            trial.system_attrs = decision.system_attrs
            if decision.prune:
                step = decision.step if decision.step is not None else max(curves[trial.number])
                jobs_repo.request_cancel(session, trial.job_id, now)
                stopped_at = curves[trial.number][step]
                repo.end_trial(trial, TrialState.PRUNED, now, value=stopped_at, pruned_step=step)
                log.info("study %s trial %d pruned at step %d", row.id, trial.number, step)
            records[index] = repo.record(trial, curves[trial.number], ties[trial.number])
        return trials, records

    @staticmethod
    def _curve(session: Session, job_id: str, metric: str) -> dict[int, float]:
        points = job_outputs.read_metrics(session, job_id, metric)
        return curve((p.attempt_number, p.step, p.value) for p in points)

    @classmethod
    def _tiebreak(cls, session: Session, job_id: str, metric: str) -> dict[int, float]:
        """The job's other epoch metric, signed, that breaks the pruner's ties (none when
        the job does not report it)."""
        other = tie_breaker(metric)
        if other is None:
            return {}
        return {step: other[1] * v for step, v in cls._curve(session, job_id, other[0]).items()}

    @staticmethod
    def _best_epoch(session: Session, job_id: str) -> int | None:
        points = job_outputs.read_metrics(session, job_id, "best_epoch")
        return int(points[-1].value) if points else None

    def _start_trial(
        self,
        study_id: str,
        search: dict[str, Any],
        job: dict[str, Any],
        principal: Principal,
        records: list[TrialRecord],
    ) -> bool:
        """Ask for the next trial from ``records`` (this round's, settled) and queue its
        job with its row, in one transaction; the new trial joins ``records``. False when
        it cannot start now (the tenant's quota: the next round tries again)."""
        config = _config(search)
        asked = next_params(config, records)
        number = len(records)
        try:
            prepared = self.jobs.prepare(principal, self._submit(job, asked.params))
            with self.db.session(write=True) as session:
                job_id = self.jobs.queue(session, principal, prepared)
                searched = {k: v for k, v in asked.params.items() if k in config.space.searched}
                added = repo.add_trial(
                    session,
                    study_id,
                    number,
                    job_id=job_id,
                    params=searched,
                    system_attrs=asked.system_attrs,
                    now=self.clock(),
                )
                if added is None:  # another round took the number: this job goes too
                    raise _Taken
        except _Taken:
            return False
        except NimbusError as exc:
            log.info("study %s: trial %d waits: %s", study_id, number, exc.message)
            return False
        self.jobs.queued()
        records.append(
            TrialRecord(number, searched, TrialState.RUNNING, system_attrs=asked.system_attrs)
        )
        return True

    def _ending(
        self, session: Session, row: StudyRow, trials: list[StudyTrialRow], why: str
    ) -> _Ending:
        """How the study ends (its trials settled): its best trial, and what to register
        (who, name, job)."""
        found = best(row.search["direction"], [repo.record(t, {}) for t in trials])
        if found is None:
            return _Ending("failed", f"{why}, and none completed with a value", None, None)
        name = row.search.get("register")
        job_id = next(t.job_id for t in trials if t.number == found.number)
        register = (self._principal_of(session, row), str(name), job_id) if name else None
        return _Ending("succeeded", why, found.number, register)

    def _end(self, study_id: str, tenant_id: int, ending: _Ending) -> None:
        """Register the best trial's model if asked (a failure is said in the study's
        reason), then end the study: a reader never sees it ended before its model is
        there. Registering is idempotent per job, so a crash in between costs nothing."""
        reason = ending.reason
        if ending.register is not None:
            assert self.register is not None
            principal, name, job_id = ending.register
            try:
                self.register(principal, name, job_id)
                reason += f"; its best trial's model registered as {name}"
            except NimbusError as exc:
                reason += f"; registering {name} failed: {exc.message}"
        with self.db.session(write=True) as session:
            row = repo.get(session, tenant_id, study_id, lock=True)
            row.best_trial = ending.best
            repo.end(session, row, ending.state, reason, self.clock())

    @staticmethod
    def _principal_of(session: Session, row: StudyRow) -> Principal:
        """Who submits the study's trials: its creator's token, as a member of its tenant
        (the tenant's quota counts them)."""
        return acting_member(session, row.tenant_id, row.created_by, f"study {row.id}")


def _trial(row: StudyTrialRow) -> wire.Trial:
    return wire.Trial(
        number=row.number,
        job=row.job_id,
        params=dict(row.params),
        state=row.state,
        value=row.value,
        pruned_step=row.pruned_step,
        created_at=row.created_at,
        ended_at=row.ended_at,
    )


def study_loop(studies: StudyService, leads: Callable[[], bool], interval: float) -> Ticker:
    """Background work of the studies (see :class:`~nimbus.api.state.Background`): every
    ``interval`` seconds, while ``leads()`` (this control plane leads the scheduler), one
    :meth:`StudyService.advance` round."""

    def advance() -> None:
        if leads():
            studies.advance()

    return Ticker("studies", interval, advance)
