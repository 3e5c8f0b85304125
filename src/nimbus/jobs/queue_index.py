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

    __slots__ = ("jobs", "old", "shape", "size", "tenant_id")

    def __init__(self, shape: _ShapeGroups, tenant_id: int) -> None:
        self.shape = shape
        self.tenant_id = tenant_id
        self.jobs: list[_HeapEntry] = []
        self.old: list[_HeapEntry] = []  # those waiting at least reserve_after
        self.size = 0


class _ShapeGroups:
    __slots__ = ("groups", "key", "need")

    def __init__(self, key: Shape, need: Resources) -> None:
        self.key = key
        self.need = need
        self.groups: dict[int, _Group] = {}


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
            shape = self._shapes[shape_of(entry.job.resources)]
            group = shape.groups[entry.job.tenant_id]
            group.size -= 1
            if group.size == 0:
                del shape.groups[entry.job.tenant_id]
                if not shape.groups:
                    del self._shapes[shape.key]
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
        if reserve:
            assert self.reserve_after is not None
            self._age(now - self.reserve_after)
        fitting = {key for key, shape in self._shapes.items() if capacity.fits(shape.need, used)}
        if not fitting:
            return []  # nothing can start; whether the node would reserve does not matter
        room: dict[int, int] = {}  # per tenant, how many more jobs it may start

        def room_of(tenant_id: int) -> int:
            left = room.get(tenant_id)
            if left is None:
                limit = limit_of(tenant_limit, tenant_id)
                left = _UNLIMITED if limit is None else limit - running_per_tenant.get(tenant_id, 0)
                room[tenant_id] = left
            return left

        # (order, kind, tie, group): kind 0 is a group's next job, 1 a job to reserve for.
        merge: list[tuple[_Order, int, int, _Group]] = []
        for key, shape in self._shapes.items():
            fits_now = key in fitting
            if not fits_now and not (reserve and capacity.fits(shape.need)):
                continue  # a job that never fits this node is never reserved for
            kind = 0 if fits_now else 1
            for tenant_id, group in shape.groups.items():
                heap = group.jobs if fits_now else group.old
                if not heap or room_of(tenant_id) <= 0:
                    continue
                head = self._head(heap)
                if head is not None:
                    merge.append((head, kind, len(merge), group))
        heapq.heapify(merge)
        tie = len(merge)
        chosen: list[str] = []
        while merge:
            order, kind, _, group = heapq.heappop(merge)
            if room[group.tenant_id] <= 0:
                continue  # this tenant's later jobs are all skipped too
            if kind == 1:
                break  # a job that waited too long does not fit: the node drains for it
            need = group.shape.need
            tie += 1
            if capacity.fits(need, used):
                job_id = order[2]
                heapq.heappop(group.jobs)
                self.remove(job_id)
                chosen.append(job_id)
                used = used.plus(need)
                room[group.tenant_id] -= 1
                head = self._head(group.jobs) if group.size else None
                if head is not None:
                    heapq.heappush(merge, (head, 0, tie, group))
            elif reserve:
                head = self._head(group.old)
                if head is not None:
                    heapq.heappush(merge, (head, 1, tie, group))
        return chosen

    def _enqueue(self, entry: _Entry) -> None:
        job = entry.job
        key = shape_of(job.resources)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _ShapeGroups(key, job.resources)
        group = shape.groups.get(job.tenant_id)
        if group is None:
            group = shape.groups[job.tenant_id] = _Group(shape, job.tenant_id)
        heapq.heappush(group.jobs, (job.order, entry.seq))
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
                group = self._shapes[shape_of(job.resources)].groups[job.tenant_id]
                heapq.heappush(group.old, (job.order, seq))
