"""The scheduling policy as first written: a plain walk over every queued job.

It is the definition :class:`nimbus.jobs.queue_index.QueueIndex` must agree with
(tests/jobs/test_queue_index.py), and the baseline of ``bench/schedule_sim.py``. O(queued)
per decision, plus a sort.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from nimbus.jobs.capacity import Capacity, Usage
from nimbus.jobs.policy import QueuedJob, RunningJob


def pick_reference(
    queued: Sequence[QueuedJob],
    running: Sequence[RunningJob],
    capacity: Capacity,
    tenant_limit: int | Mapping[int, int] | None,
    now: datetime,
    *,
    reserve_after: timedelta | None = None,
) -> list[str]:
    used = Usage()
    for run in running:
        if run.local:
            used = used.plus(run.resources)
    per_tenant = Counter(run.tenant_id for run in running)
    chosen: list[str] = []
    for job in sorted(queued, key=lambda j: (-j.priority, j.created_at, j.id)):
        if job.not_before is not None and job.not_before > now:
            continue
        limit = tenant_limit if not isinstance(tenant_limit, Mapping) else None
        if isinstance(tenant_limit, Mapping):
            limit = tenant_limit.get(job.tenant_id)
        if limit is not None and per_tenant[job.tenant_id] >= limit:
            continue
        if not capacity.fits(job.resources):
            continue  # never fits this node: another node may take it; never reserve for it
        if capacity.fits(job.resources, used):
            chosen.append(job.id)
            used = used.plus(job.resources)
            per_tenant[job.tenant_id] += 1
            continue
        waiting_since = max(job.created_at, job.not_before or job.created_at)
        if reserve_after is not None and now - waiting_since >= reserve_after:
            break  # hold the rest back so the node drains for this job
    return chosen
