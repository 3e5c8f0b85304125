"""What a claim reads of the queue: enough queued jobs that
:func:`~nimbus.jobs.policy.pick` over them decides exactly as over the whole queue, found with
index seeks instead of a scan of the queue.

Why a few jobs suffice. ``pick`` walks the eligible queued jobs in its order (priority, then
age, then id). Group them by tenant and by the resource columns (``cpus``, ``gpus``,
``memory_bytes``, ``workers``): the jobs of a group need the same resources. During one walk
free resources and each tenant's room only shrink, so once the walk passes over a job of a
group without starting it, it starts no later job of that group either. Of a group, the walk
therefore needs only its first jobs, up to and including the first it does not start. With
``reserve_after`` a job not started may still stop the walk (the node drains for a job that
waited that long): the walk then also needs, after the jobs it read of the group, the group's
first such *old* job, where it would stop; the jobs between are young and do not fit, so
they change nothing.

How they are read (:class:`QueueRead`):

1. the first eligible job of every group, in one statement: a recursive *skip scan* of the
   partial index ``ix_jobs_queued_groups`` (migration 0012; the queued jobs by state, group
   and the policy's order). From one group's first job, the next group's is found by one
   row value seek on PostgreSQL; on SQLite, which seeks a row value range from the outer
   query on its first column only, by at most five seeks (one per column of the group).
   So the cost grows with the number of groups, not of jobs;
2. ``pick`` over what was read. Each group whose jobs read were all started gets more read
   (at least four, and as many again as were read, after the last one); with
   ``reserve_after``, each group with a job not started but no old job after it gets its
   first old job after the last one read. One seek per group. Repeat until nothing more is
   needed: that ``pick`` is the whole queue's. The groups read further are those the node
   starts jobs from, so a claim makes a few rounds of a few statements.

The statements read without locks, each its own snapshot on PostgreSQL (READ COMMITTED), as
the claim did before: the rows chosen are then locked and re-checked (:mod:`nimbus.db.jobs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Session

from nimbus.db.tables import JobRow, UTCDateTime
from nimbus.jobs.domain import Resources
from nimbus.jobs.policy import QueuedJob

GroupKey = tuple[int, float, int, int, int]  # tenant_id, cpus, gpus, memory_bytes, workers
_JOBS: Any = JobRow.__table__
_GROUP_NAMES = ("tenant_id", "cpus", "gpus", "memory_bytes", "workers")
# Each statement is built once, its values bound at each execution.
_NOW = bindparam("now", type_=UTCDateTime())


def _columns(t: Any) -> list[Any]:
    c = t.c
    return [
        c.id,
        c.tenant_id,
        c.priority,
        c.created_at,
        c.cpus,
        c.gpus,
        c.memory_bytes,
        c.workers,
        c.not_before,
    ]


def _group(t: Any) -> list[Any]:
    return [t.c[name] for name in _GROUP_NAMES]


def _order(t: Any) -> list[Any]:
    return [t.c.priority.desc(), t.c.created_at, t.c.id]


def _eligible(t: Any) -> ColumnElement[bool]:
    # 'queued' as a literal: SQLite uses a partial index only for the very term it names.
    return and_(
        t.c.state == literal_column("'queued'"),
        t.c.cancel_requested.is_(False),
        or_(t.c.not_before.is_(None), t.c.not_before <= _NOW),
    )


def _job(row: Sequence[Any]) -> tuple[GroupKey, QueuedJob]:
    job_id, tenant_id, priority, created_at, cpus, gpus, memory, workers, not_before = row
    need = Resources(cpus=cpus, gpus=gpus, memory_bytes=memory, workers=workers)
    job = QueuedJob(job_id, tenant_id, priority, created_at, need, not_before)
    return (tenant_id, cpus, gpus, memory, workers), job


def _heads_statement(dialect: str) -> Select[Any]:
    """The first eligible job of every group: a recursive skip scan of the index, from each
    group's first job to the next group's by one seek (a few on SQLite)."""
    first = (
        select(*_columns(_JOBS))
        .where(_eligible(_JOBS))
        .order_by(_JOBS.c.state, *_group(_JOBS), *_order(_JOBS))
        .limit(1)
        .subquery("first_head")
    )
    heads = select(*first.c).cte("heads", recursive=True)
    h, j = heads.alias("h"), _JOBS.alias("j")
    following = _next_group_head(dialect, h)
    heads = heads.union_all(select(*_columns(j)).select_from(h.join(j, j.c.id == following)))
    return select(*heads.c)


def _next_group_head(dialect: str, h: Any) -> ColumnElement[Any]:
    """The id of the first eligible job of the group after ``h``'s, in the index's order."""

    def seek(after: Callable[[Any], list[ColumnElement[bool]]]) -> ColumnElement[Any]:
        n = _JOBS.alias()
        return (
            select(n.c.id)
            .where(_eligible(n), *after(n))
            .order_by(n.c.state, *_group(n), *_order(n))
            .limit(1)
            .scalar_subquery()
        )

    mine = _group(h)
    if dialect == "postgresql":  # one seek on a row value
        queued: ColumnElement[str] = literal_column("'queued'")
        return seek(lambda n: [tuple_(n.c.state, *_group(n)) > tuple_(queued, *mine)])

    # SQLite seeks a row value range on its first column only when the value comes from the
    # outer query, so: one seek per column, and the first to find a job wins (same tenant,
    # cpus, gpus and memory but more workers; else same tenant, cpus and gpus but more
    # memory; ...; else a later tenant). COALESCE stops at the first that finds one.
    def level(depth: int) -> ColumnElement[Any]:
        def after(n: Any) -> list[ColumnElement[bool]]:
            theirs = _group(n)
            same = [theirs[i] == mine[i] for i in range(depth)]
            return [*same, theirs[depth] > mine[depth]]

        return seek(after)

    return func.coalesce(*(level(depth) for depth in reversed(range(len(mine)))))


def _following_statement(old: bool) -> Select[Any]:
    """Of one group, the first ``count`` eligible jobs after a job (``old`` ones only: waiting
    since ``cutoff`` or earlier, :attr:`QueuedJob.waiting_since`)."""
    c = _JOBS.c
    priority: ColumnElement[int] = bindparam("after_priority")
    created_at = bindparam("after_created_at", type_=UTCDateTime())
    query = select(*_columns(_JOBS)).where(
        _eligible(_JOBS),
        *(column == bindparam(f"group_{column.name}") for column in _group(_JOBS)),
        or_(
            c.priority < priority,
            and_(
                c.priority == priority,
                or_(
                    c.created_at > created_at,
                    and_(c.created_at == created_at, c.id > bindparam("after_id")),
                ),
            ),
        ),
    )
    if old:
        cutoff = bindparam("cutoff", type_=UTCDateTime())
        query = query.where(
            c.created_at <= cutoff, or_(c.not_before.is_(None), c.not_before <= cutoff)
        )
    return query.order_by(*_order(_JOBS)).limit(bindparam("count"))


_HEADS = {dialect: _heads_statement(dialect) for dialect in ("postgresql", "sqlite")}
_FOLLOWING = {old: _following_statement(old) for old in (False, True)}


@dataclass
class _Group:
    read: list[QueuedJob]  # its first eligible jobs, in order
    complete: bool = False  # it has no more
    probed: tuple[str, QueuedJob | None] | None = None  # (after which job, its first old one)


class QueueRead:
    """The queue as a claim at ``now`` needs it; :meth:`settle` reads more until ``pick``
    over what was read is ``pick`` over the whole queue."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.groups: dict[GroupKey, _Group] = {}
        dialect = "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"
        for row in session.execute(_HEADS[dialect], {"now": now}):
            key, job = _job(row)
            self.groups[key] = _Group([job])

    def tenants(self) -> set[int]:
        """The tenants with jobs the claim may start."""
        return {key[0] for key in self.groups}

    def jobs(self) -> list[QueuedJob]:
        found: dict[str, QueuedJob] = {}
        for group in self.groups.values():
            found.update((job.id, job) for job in group.read)
            if group.probed is not None and group.probed[1] is not None:
                found[group.probed[1].id] = group.probed[1]
        return list(found.values())

    def settle(
        self,
        decide: Callable[[list[QueuedJob]], list[str]],
        reserve_after: timedelta | None = None,
        may_reserve: Callable[[QueuedJob], bool] = lambda job: True,
    ) -> list[str]:
        """``decide`` (``pick`` with the node's capacity, usage and limits) over the queue.

        ``may_reserve(job)``: False where no job of ``job``'s group can make this node
        reserve (its shape never fits the node, its tenant is at its limit), to spare reads.
        """
        cutoff = self.now - reserve_after if reserve_after is not None else None
        while True:
            chosen = decide(self.jobs())
            started = set(chosen)
            wanted = 0
            for key, group in self.groups.items():
                if group.complete:
                    continue
                taken = next(
                    (i for i, job in enumerate(group.read) if job.id not in started),
                    len(group.read),
                )
                last = group.read[-1]
                if taken == len(group.read):  # all started: the walk may go further
                    count = max(4, len(group.read))
                    jobs = self._following(key, last, count, None)
                    group.read += jobs
                    group.complete = len(jobs) < count
                    wanted += 1
                elif (
                    cutoff is not None
                    and (group.probed is None or group.probed[0] != last.id)
                    and not any(job.waiting_since <= cutoff for job in group.read[taken:])
                    and may_reserve(last)
                ):  # the walk may stop at an old job of the group, after those read
                    old = self._following(key, last, 1, cutoff)
                    group.probed = (last.id, old[0] if old else None)
                    wanted += 1
            if not wanted:
                return chosen

    def _following(
        self, key: GroupKey, last: QueuedJob, count: int, cutoff: datetime | None
    ) -> list[QueuedJob]:
        values: dict[str, Any] = {
            f"group_{name}": v for name, v in zip(_GROUP_NAMES, key, strict=True)
        }
        values.update(
            now=self.now,
            after_priority=last.priority,
            after_created_at=last.created_at,
            after_id=last.id,
            count=count,
            cutoff=cutoff,
        )
        rows = self.session.execute(_FOLLOWING[cutoff is not None], values)
        return [_job(row)[1] for row in rows]
