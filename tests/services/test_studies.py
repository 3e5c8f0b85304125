"""Studies over a real metadata store: created checked, advanced round by round as their
trials' jobs run (claimed, reporting per-epoch metrics, ending), pruned, cancelled, ended."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nimbus.datasets.domain import IngestOptions
from nimbus.db import job_outputs
from nimbus.db import jobs as jobs_repo
from nimbus.db.engine import Database
from nimbus.errors import Forbidden, InvalidInput, NotFound
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Job, JobState
from nimbus.jobs.policy import Outcome
from nimbus.security import Principal, Role
from nimbus.services.code import CodeService
from nimbus.services.datasets import DatasetService
from nimbus.services.jobs import JobService
from nimbus.services.studies import StudyService
from nimbus.storage.blobs import BlobStore
from nimbus.wire.studies import StudyRequest
from tests.services.conftest import fake_ingest

NODE = Capacity(cpus=64, gpus=0, memory_bytes=1 << 40)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LR = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def setup(
    db: Database,
    blobs: BlobStore,
    tmp_path: Path,
    make_principal: Callable[..., Principal],
    clock: Clock,
) -> tuple[StudyService, Principal, Database]:
    datasets = DatasetService(db, blobs, tmp_dir=tmp_path / "tmp", ingest_fn=fake_ingest)
    member = make_principal("acme")
    source = tmp_path / "reviews.csv"
    source.write_bytes(b"text,label\nok,pos\n")
    datasets.upload(member, "reviews", source, "a" * 64, "reviews.csv", IngestOptions())
    jobs = JobService(db, datasets, CodeService(db, blobs, max_unpacked_bytes=1 << 20), NODE)
    return StudyService(db, jobs, clock=clock), member, db


def job_of(db: Database, job_id: str) -> Job:
    with db.session() as s:
        found = jobs_repo.get(s, job_id)
    assert found is not None
    return found


def request(**kw: Any) -> StudyRequest:
    body: dict[str, Any] = {
        "dataset": "reviews",
        "model": "text",
        "params": {"lr": LR, "epochs": 3},
        "metric": "val_accuracy",
        "trials": 4,
        "parallel": 2,
        "seed": 1,
        **kw,
    }
    return StudyRequest(**body)


def run_jobs(
    db: Database, clock: Clock, values: Callable[[dict[str, Any]], list[float]], *, end: bool
) -> list[str]:
    """Claim every queued job, report the per-epoch values ``values`` gives its params,
    and end it well if ``end``; the clock moves on a second. The jobs claimed."""
    clock.now += timedelta(seconds=1)
    with db.session(write=True) as s:
        claims = jobs_repo.claim_next(
            s, capacity=NODE, owner="node", now=clock.now, lease_seconds=600
        )
    for claim in claims:
        points = values(claim.job.spec.params)
        with db.session(write=True) as s:
            job_outputs.add_metrics(
                s,
                claim.attempt.id,
                [(step, "val_accuracy", v) for step, v in enumerate(points, 1)],
                clock.now,
            )
            if end:
                jobs_repo.finish_attempt(s, claim.attempt.id, Outcome.from_exit(0), clock.now)
    return [c.job.id for c in claims]


def by_lr(params: dict[str, Any]) -> list[float]:
    """Better the nearer lr is to 1e-2."""
    import math

    top = 1.0 - abs(math.log10(float(params["lr"])) + 2) / 4
    return [top * 0.8, top * 0.9, top]


def test_a_study_runs_its_trials_as_jobs_parallel_at_most_and_ends_with_the_best(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    studies, member, db = setup
    study = studies.create(member, request())
    assert study.state == "running" and study.dataset == "reviews:1"
    studies.advance()
    trials = studies.trials(member, study.id).trials
    assert [t.number for t in trials] == [0, 1]  # parallel 2
    assert all(t.state == "running" and 1e-4 <= t.params["lr"] <= 0.1 for t in trials)
    studies.advance()
    assert len(studies.trials(member, study.id).trials) == 2  # nothing more while they run
    assert studies.importances(member, study.id).importances == {}
    for _ in range(3):
        run_jobs(db, clock, by_lr, end=True)
        studies.advance()
    done = studies.get(member, study.id)
    assert done.state == "succeeded", done
    assert done.counts == {"complete": 4}
    trials = studies.trials(member, study.id).trials
    assert done.best is not None
    assert done.best.value == max(t.value for t in trials if t.value is not None)
    # Four complete trials: enough for the importances; lr is the only one searched.
    shares = studies.importances(member, study.id)
    assert shares.complete == 4 and shares.importances == {"lr": 1.0}
    assert studies.importances(member, study.id) == shares  # read from the cache
    (summary,) = studies.summaries(member)  # what the console's list shows
    assert summary.id == study.id and summary.counts == {"complete": 4} and summary.done == 4
    assert summary.best_value == done.best.value and summary.trials == 4
    assert [s.best for s in studies.list_studies(member).studies] == [done.best]
    # Every trial is an ordinary job with the study's fixed params and its own lr.
    for trial in trials:
        job = job_of(db, trial.job)
        assert job.spec.params["epochs"] == 3 and job.spec.params["lr"] == trial.params["lr"]
        assert job.state is JobState.SUCCEEDED


def test_a_round_reads_the_curves_of_running_trials_not_of_those_ended_before_it(
    setup: tuple[StudyService, Principal, Database],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial's job that ended writes no more: its curve is read in the round after it
    ended, then kept; a round reads only the running trials' (tie-breaker included)."""
    studies, member, db = setup
    study = studies.create(member, request(trials=4, parallel=2))
    studies.advance()
    first = run_jobs(db, clock, by_lr, end=True)  # trials 0 and 1 end
    studies.advance()  # settles them (read while running), starts trials 2 and 3
    read: list[str] = []
    real = job_outputs.read_metrics

    def counted(session: Any, job_id: str, key: str) -> Any:
        read.append(job_id)
        return real(session, job_id, key)

    monkeypatch.setattr(job_outputs, "read_metrics", counted)
    studies.advance()  # trials 0 and 1 ended before this round: read once more, then kept
    assert set(first) <= set(read)
    read.clear()
    studies.advance()
    assert read and not set(first) & set(read)  # only trials 2 and 3, still running
    run_jobs(db, clock, by_lr, end=True)
    studies.advance()
    done = studies.get(member, study.id)
    assert done.state == "succeeded" and done.counts == {"complete": 4}
    assert done.best is not None and done.best.value == max(
        t.value for t in studies.trials(member, study.id).trials if t.value is not None
    )


def test_a_trial_whose_job_failed_counts_as_failed_never_as_a_value(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    studies, member, db = setup
    study = studies.create(member, request(trials=2))
    studies.advance()
    clock.now += timedelta(seconds=1)
    with db.session(write=True) as s:
        claims = jobs_repo.claim_next(s, capacity=NODE, owner="n", now=clock.now, lease_seconds=60)
        for claim in claims:
            job_outputs.add_metrics(s, claim.attempt.id, [(1, "val_accuracy", 0.99)], clock.now)
            assert claim.job.state is JobState.RUNNING
    with db.session(write=True) as s:
        for claim in claims:
            jobs_repo.request_cancel(s, claim.job.id, clock.now)
            jobs_repo.finish_attempt(s, claim.attempt.id, Outcome.from_exit(1), clock.now)
    studies.advance()
    ended = studies.get(member, study.id)
    assert ended.state == "failed" and "none completed" in (ended.reason or "")
    assert ended.counts == {"failed": 2} and ended.best is None


def test_a_trial_far_behind_is_pruned_and_its_job_cancelled(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    studies, member, db = setup
    study = studies.create(member, request(trials=6, parallel=1, pruner="median"))
    good = lambda params: [0.8, 0.9, 0.95]  # noqa: E731
    for _ in range(3):  # three good trials, one after the other
        studies.advance()
        run_jobs(db, clock, good, end=True)
    studies.advance()
    [poor_job] = run_jobs(db, clock, lambda params: [0.1, 0.1], end=False)
    studies.advance()
    trial = next(t for t in studies.trials(member, study.id).trials if t.job == poor_job)
    # Its two epochs arrived in one round: each judged at its own step, it is given up at
    # the first.
    assert trial.state == "pruned" and trial.pruned_step == 1 and trial.value == 0.1
    assert job_of(db, poor_job).cancel_requested


def test_asha_breaks_a_tie_at_a_rung_by_the_jobs_val_loss(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    """Trials whose val_accuracy ties at epoch 1: the one with the worst val_loss is pruned
    (Optuna alone promotes every tie); values stay the plain val_accuracy."""
    studies, member, db = setup
    study = studies.create(member, request(trials=5, parallel=1, pruner="asha"))
    for loss in (0.3, 0.29, 0.28, 0.27, 0.5):  # each better than the last, then the worst
        studies.advance()
        clock.now += timedelta(seconds=1)
        with db.session(write=True) as s:
            [claim] = jobs_repo.claim_next(
                s, capacity=NODE, owner="node", now=clock.now, lease_seconds=600
            )
            metrics = [(1, "val_accuracy", 0.9), (1, "val_loss", loss)]
            job_outputs.add_metrics(s, claim.attempt.id, metrics, clock.now)
        studies.advance()  # judged while running, at epoch 1
        with db.session(write=True) as s:
            jobs_repo.finish_attempt(s, claim.attempt.id, Outcome.from_exit(0), clock.now)
    studies.advance()
    trials = studies.trials(member, study.id).trials
    assert [t.state for t in trials] == ["complete"] * 4 + ["pruned"]
    assert {t.value for t in trials} == {0.9} and trials[4].pruned_step == 1
    # The best is the plain metric's: the earliest of the tied, not the lowest loss.
    shown = studies.get(member, study.id).best
    assert shown is not None and shown.value == 0.9 and shown.number == 0


def test_cancel_stops_the_running_trials_and_ends_the_study(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    studies, member, db = setup
    study = studies.create(member, request())
    studies.advance()
    ended = studies.cancel(member, study.id)
    assert ended.state == "cancelled" and ended.counts == {"failed": 2}
    studies.advance()
    assert len(studies.trials(member, study.id).trials) == 2  # nothing new after it
    for trial in studies.trials(member, study.id).trials:
        assert job_of(db, trial.job).state is JobState.CANCELLED


def test_the_time_budget_ends_the_study(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    studies, member, db = setup
    study = studies.create(member, request(timeout="10s", trials=50))
    studies.advance()
    run_jobs(db, clock, by_lr, end=True)
    studies.advance()
    clock.now += timedelta(seconds=11)
    studies.advance()
    ended = studies.get(member, study.id)
    assert ended.state == "succeeded" and "ran out" in (ended.reason or "")
    assert ended.counts.get("complete") == 2 and ended.counts.get("running") is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"params": {"lr": {"type": "float", "low": 1, "high": 0.1}}}, "is not below high"),
        ({"params": {"width": LR}}, "the text model takes none such"),
        ({"sampler": "bayes"}, "unknown sampler"),
        (
            {"sampler": "grid", "params": {"epochs": {"type": "int", "low": 1, "high": 3}}},
            "the grid has 3 points",
        ),
        ({"dataset": "missing"}, "missing"),
        ({"cpus": 1000}, "cpus"),
        ({"params": {"epochs": 3}}, "no parameter is searched"),
    ],
)
def test_a_bad_study_is_refused_at_create_and_nothing_is_recorded(
    setup: tuple[StudyService, Principal, Database], changes: dict[str, Any], named: str
) -> None:
    studies, member, _ = setup
    with pytest.raises((InvalidInput, NotFound)) as raised:
        studies.create(member, request(**changes))
    assert named in raised.value.message
    assert studies.list_studies(member).studies == []


def test_a_viewer_cannot_start_or_cancel_and_another_tenant_sees_nothing(
    setup: tuple[StudyService, Principal, Database], make_principal: Callable[..., Principal]
) -> None:
    studies, member, _ = setup
    study = studies.create(member, request())
    viewer = make_principal("acme", role=Role.VIEWER)
    with pytest.raises(Forbidden):
        studies.create(viewer, request())
    with pytest.raises(Forbidden):
        studies.cancel(viewer, study.id)
    assert studies.get(viewer, study.id).id == study.id
    other = make_principal("globex")
    with pytest.raises(NotFound):
        studies.get(other, study.id)
    assert studies.list_studies(other).studies == [] and studies.summaries(other) == []


def test_a_created_study_and_its_running_trials_jobs_wake_the_loop(
    setup: tuple[StudyService, Principal, Database], clock: Clock
) -> None:
    """What the server wakes the loop for: a study created, and its metric reported by a
    job that runs one of its running trials (as of the last round), nothing else."""
    studies, member, db = setup
    told: list[str] = []
    studies.on_created.append(lambda: told.append("created"))
    study = studies.create(member, request())
    assert told == ["created"] and not studies.watches("job_other", ["val_accuracy"])
    studies.advance()
    first = [t.job for t in studies.trials(member, study.id).trials]
    assert len(first) == 2 and all(studies.watches(job, ["val_accuracy"]) for job in first)
    assert not studies.watches(first[0], ["train_loss"])  # not the study's metric
    run_jobs(db, clock, by_lr, end=True)
    studies.advance()  # those two end, the next two start
    trials = studies.trials(member, study.id).trials
    assert not any(studies.watches(job, ["val_accuracy"]) for job in first)
    running = [t.job for t in trials if t.state == "running"]
    assert len(running) == 2 and all(studies.watches(job, ["val_accuracy"]) for job in running)
