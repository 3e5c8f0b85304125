"""The queued jobs indexed for :func:`~nimbus.jobs.policy.pick`: its decisions, at scale.

:func:`~nimbus.jobs.policy.pick` defines the order (priority, then FIFO), the per-tenant
limits, backfilling and ``reserve_after``. Walking every queued job in that order for every
node costs O(queued) per decision, which does not scale to a large queue and many nodes. The
index gives the same answers while looking at few jobs:

- jobs are grouped by *shape* (the total resources they need) and, within a shape, by tenant;
  each group is a heap in the policy's order. A decision merges only the heads of the groups
  whose shape fits the node's free resources and whose tenant is below its limit, so a tenant
  at its limit or a shape that cannot fit costs nothing, however many jobs it has queued;
- free resources only shrink during one decision, so once a shape stops fitting no later job
  of that shape can start: its group leaves the merge. With ``reserve_after`` the group then
  stands for its earliest job that has waited long enough, where :func:`pick` would stop;
- jobs whose ``not_before`` is in the future wait in a heap by that time, and jobs that have
  not yet waited ``reserve_after`` in a heap by the time they started waiting: both are moved
  on as time passes, so time only moves forward for one index.

The index is incremental: :meth:`QueueIndex.add` and :meth:`QueueIndex.remove` as jobs come
and go, and :meth:`QueueIndex.take` removes the jobs it picks. Nothing here does I/O or reads a
clock. ``tests/jobs/test_queue_index.py`` checks it against the plain walk.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import count

from nimbus.jobs.capacity import Capacity, Usage
from nimbus.jobs.domain import Resources

# A job limit for every tenant, or per tenant (a tenant missing from the mapping has none).
TenantLimit = int | Mapping[int, int] | None


@dataclass(frozen=True)
class QueuedJob:
    """What :func:`~nimbus.jobs.policy.pick` needs to know of a queued job."""

    id: str
    tenant_id: int
    priority: int
    created_at: datetime
    resources: Resources
    not_before: datetime | None = None

    @property
    def order(self) -> tuple[int, datetime, str]:
        """The policy's order: higher priority first, then older, then by id."""
        return (-self.priority, self.created_at, self.id)

    @property
    def waiting_since(self) -> datetime:
        return max(self.created_at, self.not_before or self.created_at)


def limit_of(tenant_limit: TenantLimit, tenant_id: int) -> int | None:
    if tenant_limit is None or isinstance(tenant_limit, int):
        return tenant_limit
    return tenant_limit.get(tenant_id)


Shape = tuple[float, int, int, tuple[tuple[str, float], ...]]
_UNLIMITED = sys.maxsize
_Order = tuple[int, datetime, str]
_HeapEntry = tuple[_Order, int]  # (order, seq): stale once its job left or came back


def shape_of(need: Resources) -> Shape:
    """What decides whether a job fits: its totals over all workers."""
    return (
        need.total_cpus,
        need.total_gpus,
        need.total_memory_bytes,
        tuple(need.total_custom.items()),
    )


class _Group:
    """The eligible jobs of one tenant and one shape, as heaps in the policy's order."""

    __slots__ = ("jobs", "old", "size", "tenant_id")

    def __init__(self, tenant_id: int) -> None:
        self.tenant_id = tenant_id
        self.jobs: list[_HeapEntry] = []
        self.old: list[_HeapEntry] = []  # those waiting at least reserve_after
        self.size = 0


_Head = tuple[_Order, int]  # (a group's first job, its tenant)


class _ShapeGroups:
    """The groups of one shape, and the heads of their heaps merged in the policy's order.

    ``heads`` (``olds``) holds each group's first job (first old job), plus stale entries for
    heads that have since changed; an entry is current when it names its group's first job.
    """

    __slots__ = ("groups", "heads", "key", "need", "olds")

    def __init__(self, key: Shape, need: Resources) -> None:
        self.key = key
        self.need = need
        self.groups: dict[int, _Group] = {}
        self.heads: list[_Head] = []
        self.olds: list[_Head] = []


class _Entry:
    __slots__ = ("eligible", "job", "seq")

    def __init__(self, job: QueuedJob, seq: int) -> None:
        self.job = job
        self.seq = seq
        self.eligible = False  # in its group (its not_before, if any, has passed)


class QueueIndex:
    """Queued jobs, answering :func:`~nimbus.jobs.policy.pick` for one node at a time."""

    def __init__(self, reserve_after: timedelta | None = None) -> None:
        self.reserve_after = reserve_after
        self._entries: dict[str, _Entry] = {}
        self._shapes: dict[Shape, _ShapeGroups] = {}
        self._delayed: list[tuple[datetime, int, str]] = []  # by not_before
        self._young: list[tuple[datetime, int, str]] = []  # by waiting_since
        self._seq = count()
        self._now: datetime | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def add(self, job: QueuedJob) -> None:
        """Queue ``job`` (a job that comes back after an attempt is added again)."""
        if job.id in self._entries:
            raise ValueError(f"job {job.id} is already queued")
        entry = _Entry(job, next(self._seq))
        self._entries[job.id] = entry
        if job.not_before is None:
            self._enqueue(entry)
        else:
            heapq.heappush(self._delayed, (job.not_before, entry.seq, job.id))

    def remove(self, job_id: str) -> QueuedJob:
        """Take a job out (started elsewhere, cancelled); KeyError if it is not queued."""
        entry = self._entries.pop(job_id)
        if entry.eligible:
            tenant_id = entry.job.tenant_id
            shape = self._shapes[shape_of(entry.job.resources)]
            group = shape.groups[tenant_id]
            group.size -= 1
            if group.size == 0:
                del shape.groups[tenant_id]
                if not shape.groups:
                    del self._shapes[shape.key]
                return entry.job
            head = self._head(group.jobs)
            if head is not None and head > entry.job.order:
                heapq.heappush(shape.heads, (head, tenant_id))  # the group's new first job
            if group.old:
                old = self._head(group.old)
                if old is not None and old > entry.job.order:
                    heapq.heappush(shape.olds, (old, tenant_id))
        return entry.job

    def take(
        self,
        capacity: Capacity,
        used: Usage,
        running_per_tenant: Mapping[int, int],
        tenant_limit: TenantLimit,
        now: datetime,
    ) -> list[str]:
        """What :func:`~nimbus.jobs.policy.pick` chooses for a node of ``capacity`` that
        already uses ``used``, when each tenant runs ``running_per_tenant`` jobs on all nodes;
        the chosen jobs leave the index. ``now`` must not go back from one call to the next."""
        if self._now is not None and now < self._now:
            raise ValueError(f"time went back: {now} after {self._now}")
        self._now = now
        self._release(now)
        reserve = self.reserve_after is not None
        if self.reserve_after is not None:
            self._age(now - self.reserve_after)
        fitting = {key for key, shape in self._shapes.items() if capacity.fits(shape.need, used)}
        if not fitting:
            return []  # nothing can start; whether the node would reserve does not matter
        walk = _Walk(self, running_per_tenant, tenant_limit)
        for key, shape in self._shapes.items():
            if key in fitting:
                walk.next(shape, 0)
            elif reserve and capacity.fits(shape.need):
                walk.next(shape, 1)  # a job that never fits this node is never reserved for
        chosen: list[str] = []
        while walk.merge:
            order, kind, _, shape, tenant_id = heapq.heappop(walk.merge)
            if walk.room[tenant_id] <= 0:  # started enough in this walk: skip its later jobs
                walk.aside.append((shape.olds if kind else shape.heads, (order, tenant_id)))
                walk.next(shape, kind)
            elif kind == 1:
                walk.aside.append((shape.olds, (order, tenant_id)))
                break  # a job that waited too long does not fit: the node drains for it
            elif capacity.fits(shape.need, used):
                heapq.heappop(shape.groups[tenant_id].jobs)
                self.remove(order[2])
                chosen.append(order[2])
                used = used.plus(shape.need)
                walk.room[tenant_id] -= 1
                walk.next(shape, 0)
            else:  # free resources only shrink: no later job of this shape fits either
                walk.aside.append((shape.heads, (order, tenant_id)))
                if reserve:
                    walk.next(shape, 1)
        walk.restore()
        return chosen

    def _enqueue(self, entry: _Entry) -> None:
        job = entry.job
        key = shape_of(job.resources)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _ShapeGroups(key, job.resources)
        group = shape.groups.get(job.tenant_id)
        if group is None:
            group = shape.groups[job.tenant_id] = _Group(job.tenant_id)
        heapq.heappush(group.jobs, (job.order, entry.seq))
        if self._head(group.jobs) == job.order:
            heapq.heappush(shape.heads, (job.order, job.tenant_id))
        group.size += 1
        entry.eligible = True
        if self.reserve_after is not None:
            heapq.heappush(self._young, (job.waiting_since, entry.seq, job.id))

    def _live(self, job_id: str, seq: int) -> _Entry | None:
        entry = self._entries.get(job_id)
        return entry if entry is not None and entry.seq == seq else None

    def _head(self, heap: list[_HeapEntry]) -> _Order | None:
        """The first live job of a group's heap, dropping stale entries on the way."""
        while heap:
            order, seq = heap[0]
            if self._live(order[2], seq) is not None:
                return order
            heapq.heappop(heap)
        return None

    def _release(self, now: datetime) -> None:
        """Make eligible the jobs whose ``not_before`` has come."""
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._delayed)
            entry = self._live(job_id, seq)
            if entry is not None:
                self._enqueue(entry)

    def _age(self, cutoff: datetime) -> None:
        """Mark as old the jobs waiting since ``cutoff`` or earlier (reserved for)."""
        while self._young and self._young[0][0] <= cutoff:
            _, seq, job_id = heapq.heappop(self._young)
            entry = self._live(job_id, seq)
            if entry is not None:
                job = entry.job
                shape = self._shapes[shape_of(job.resources)]
                group = shape.groups[job.tenant_id]
                heapq.heappush(group.old, (job.order, seq))
                if self._head(group.old) == job.order:
                    heapq.heappush(shape.olds, (job.order, job.tenant_id))


class _Walk:
    """One :meth:`QueueIndex.take`: per shape, a cursor on its first job (kind 0) or its
    first old job (kind 1) whose tenant may still start jobs, merged in the policy's order."""

    def __init__(
        self, index: QueueIndex, running: Mapping[int, int], tenant_limit: TenantLimit
    ) -> None:
        self.index = index
        self.running = running
        self.tenant_limit = tenant_limit
        self.room: dict[int, int] = {}  # per tenant, how many more jobs it may start
        self.merge: list[tuple[_Order, int, int, _ShapeGroups, int]] = []
        self.aside: list[tuple[list[_Head], _Head]] = []  # current heads to put back
        self.seen: set[tuple[int, _Order]] = set()
        self.tie = count()

    def room_of(self, tenant_id: int) -> int:
        left = self.room.get(tenant_id)
        if left is None:
            limit = limit_of(self.tenant_limit, tenant_id)
            left = _UNLIMITED if limit is None else limit - self.running.get(tenant_id, 0)
            self.room[tenant_id] = left
        return left

    def next(self, shape: _ShapeGroups, kind: int) -> None:
        """Put ``shape``'s next cursor of ``kind`` in the merge, if it has one."""
        heads = shape.olds if kind else shape.heads
        while heads:
            order, tenant_id = heapq.heappop(heads)
            group = shape.groups.get(tenant_id)
            if group is None or (kind, order) in self.seen:
                continue  # a group since emptied, or a duplicate entry
            if self.index._head(group.old if kind else group.jobs) != order:
                continue  # stale: the group's first job changed since
            self.seen.add((kind, order))
            if self.room_of(tenant_id) <= 0:
                self.aside.append((heads, (order, tenant_id)))
                continue
            heapq.heappush(self.merge, (order, kind, next(self.tie), shape, tenant_id))
            return

    def restore(self) -> None:
        """Put back the heads this walk took out of their shapes and did not start."""
        for order, kind, _, shape, tenant_id in self.merge:
            self.aside.append((shape.olds if kind else shape.heads, (order, tenant_id)))
        for heads, head in self.aside:
            heapq.heappush(heads, head)
