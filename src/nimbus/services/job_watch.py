"""A job as its console page shows it, and what a page that stays open polls for.

The page reads everything once (:meth:`JobWatch.snapshot`: the job, its attempts, the end of
its log, its metric points); the page's event stream then polls for what is new
(:meth:`JobWatch.poll`: the state, new log chunks after a seq, new metric points after an id),
so a long job costs each tick only what it wrote since the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from nimbus.db import job_details, job_outputs, job_watch
from nimbus.db import jobs as repo
from nimbus.db.job_outputs import LogChunk
from nimbus.db.job_watch import MetricPoint
from nimbus.errors import InvalidInput, NotFound
from nimbus.jobs.domain import Attempt, JobState
from nimbus.security import Principal
from nimbus.services.jobs import JobService, job_view, progress_view
from nimbus.wire import jobs as wire

__all__ = ["JobSnapshot", "JobWatch", "MetricPoint", "WatchPoll"]

LOG_TAIL = 200  # chunks a page opens with
METRIC_BATCH = 5000  # points a poll returns at most
FIRST_METRICS = 4 * METRIC_BATCH  # points a page opens with (the stream brings the rest)
LOG_BATCH = 1000
COMPARE_MIN, COMPARE_MAX = 2, 5


@dataclass(frozen=True)
class JobSnapshot:
    job: wire.Job
    attempts: list[Attempt]
    log_tail: list[LogChunk]
    metrics: list[MetricPoint]


@dataclass(frozen=True)
class WatchPoll:
    """One look at a watched job: its state (read first), then what it wrote since."""

    state: JobState
    exit_reason: str | None
    progress: wire.Progress | None
    logs: list[LogChunk]
    metrics: list[MetricPoint]
    done: bool  # terminal, and everything written up to now was returned


class JobWatch:
    """Reads for the console's job pages, over the job service's store."""

    def __init__(self, jobs: JobService) -> None:
        self.db = jobs.db

    def snapshot(self, principal: Principal, job_id: str) -> JobSnapshot:
        """The job (404 unless it is the principal's tenant's), its attempts, the last
        :data:`LOG_TAIL` log chunks and its first :data:`FIRST_METRICS` metric points."""
        with self.db.session() as session:
            detail = job_details.get(session, job_id, principal.tenant_id)
            if detail is None:
                raise NotFound(f"job {job_id[:80]!r} not found")
            return JobSnapshot(
                job_view(detail),
                repo.list_attempts(session, job_id),
                job_watch.log_tail(session, job_id, LOG_TAIL),
                job_watch.metrics_after(session, job_id, 0, FIRST_METRICS),
            )

    def poll(self, job_id: str, log_after: int, metric_after: int) -> WatchPoll:
        """The job's state, then its log chunks after seq ``log_after`` and metric points
        after id ``metric_after``: read in that order, a terminal state means nothing
        written before the job ended can be missed. Callers check access first."""
        with self.db.session() as session:
            state = job_details.poll_state(session, job_id)
            if state is None:
                raise NotFound(f"job {job_id[:80]!r} not found")
            logs = job_outputs.read_logs(session, job_id, log_after, LOG_BATCH)
            metrics = job_watch.metrics_after(session, job_id, metric_after, METRIC_BATCH)
        job_state, exit_reason, progress = state
        return WatchPoll(
            job_state,
            exit_reason,
            progress_view(progress),
            logs,
            metrics,
            done=job_state.terminal and len(logs) < LOG_BATCH and len(metrics) < METRIC_BATCH,
        )

    def compare(
        self, principal: Principal, ids: list[str]
    ) -> list[tuple[wire.Job, list[MetricPoint]]]:
        """2-5 jobs of the principal's tenant, in the order asked, each with its metric
        points; any unknown id is a 404, a repeated one a 400."""
        if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
            raise InvalidInput(
                f"compare {COMPARE_MIN}-{COMPARE_MAX} jobs, not {len(ids)}: "
                "give ids=JOB once per job",
                field="ids",
            )
        if len(set(ids)) != len(ids):
            raise InvalidInput("a job is named twice in ids", field="ids")
        found = []
        with self.db.session() as session:
            for job_id in ids:
                detail = job_details.get(session, job_id, principal.tenant_id)
                if detail is None:
                    raise NotFound(f"job {job_id[:80]!r} not found")
                points = job_watch.metrics_after(session, job_id, 0, FIRST_METRICS)
                found.append((job_view(detail), points))
        return found
