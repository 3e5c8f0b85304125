"""The scheduling policy at cluster scale: a discrete-event simulation.

1,000 nodes (CPU nodes, GPU nodes with an accelerator type as a custom resource), 100,000
jobs from 50 tenants with per-tenant job limits and four priorities: most are queued before
the run starts, the rest arrive during it; each runs for a drawn time, then ends. Every node
asks the policy what to start every ``--tick`` seconds of simulated time, as each node's
scheduler loop does. The decisions are made by Nimbus's own code, :class:`QueueIndex` (what
:func:`nimbus.jobs.policy.pick` runs), kept up to date as jobs come and go.

The simulation checks the policy on its own arithmetic: no node over its capacity, no tenant
over its limit (``quota_violations``), every job finished; and every ``--verify``-th decision
is compared with the plain walk (``tests/jobs/helpers_policy.py``, the policy as first
written) over the same state, which is also the baseline timed in the same run.

    .venv/bin/python bench/schedule_sim.py            # full scale, reservation off and on
    .venv/bin/python bench/schedule_sim.py --small    # a quick run

Decision times are wall-clock per call (noisy on a shared machine); ``cpu_seconds`` is the
whole run's. Figures and how to read them: docs/scheduling.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.jobs.helpers_policy import pick_reference  # noqa: E402

from nimbus.jobs.capacity import Capacity, Usage  # noqa: E402
from nimbus.jobs.domain import Resources  # noqa: E402
from nimbus.jobs.policy import QueuedJob, RunningJob, pick  # noqa: E402
from nimbus.jobs.queue_index import QueueIndex  # noqa: E402

T0 = datetime(2030, 1, 1, tzinfo=UTC)
GIB = 1 << 30
A100, H100 = "accelerator:A100", "accelerator:H100"

# (share of nodes, capacity)
NODE_KINDS = [
    (0.55, Capacity(cpus=32, gpus=0, memory_bytes=128 * GIB)),
    (0.15, Capacity(cpus=64, gpus=0, memory_bytes=512 * GIB)),
    (0.20, Capacity(cpus=64, gpus=8, memory_bytes=512 * GIB, custom={A100: 8})),
    (0.10, Capacity(cpus=96, gpus=8, memory_bytes=1024 * GIB, custom={H100: 8})),
]
# (name, weight, per-worker resources, whole-node job)
SHAPES = [
    ("cpu1", 30, Resources(cpus=1, memory_bytes=2 * GIB), False),
    ("cpu2", 18, Resources(cpus=2, memory_bytes=8 * GIB), False),
    ("cpu4", 12, Resources(cpus=4, memory_bytes=16 * GIB), False),
    ("cpu8x2", 5, Resources(cpus=8, memory_bytes=32 * GIB, workers=2), False),
    ("cpu32", 3, Resources(cpus=32, memory_bytes=120 * GIB), True),
    ("gpu1", 11, Resources(cpus=8, gpus=1, memory_bytes=64 * GIB), False),
    ("gpu1-a100", 5, Resources(cpus=8, gpus=1, memory_bytes=64 * GIB, custom={A100: 1}), False),
    ("gpu1-h100", 4, Resources(cpus=8, gpus=1, memory_bytes=64 * GIB, custom={H100: 1}), False),
    ("gpu2x2-a100", 3, Resources(cpus=8, gpus=2, memory_bytes=96 * GIB, workers=2), False),
    ("gpu4", 3, Resources(cpus=32, gpus=4, memory_bytes=256 * GIB), False),
    ("gpu8-h100", 1, Resources(cpus=96, gpus=8, memory_bytes=1000 * GIB, custom={H100: 8}), True),
]
PRIORITIES = [(-10, 0.2), (0, 0.55), (10, 0.2), (100, 0.05)]


@dataclass
class Workload:
    nodes: list[Capacity]
    jobs: list[QueuedJob]  # by arrival
    arrival: list[float]  # seconds after T0 (negative: queued before the run)
    duration: list[float]
    whole_node: list[bool]
    limits: dict[int, int]  # per tenant; tenants not in it have no limit


def workload(
    n_nodes: int, n_jobs: int, n_tenants: int, backlog: float, seed: int, quota: float = 1.0
) -> Workload:
    rng = random.Random(seed)
    nodes: list[Capacity] = []
    for share, capacity in NODE_KINDS:
        nodes += [capacity] * round(share * n_nodes)
    rng.shuffle(nodes)
    tenant_share = [1 / (t + 1) ** 1.1 for t in range(n_tenants)]  # a few big tenants
    slots = sum(c.cpus for c in nodes) / 4  # roughly how many jobs the cluster runs at once
    limits = {
        t + 1: max(5, int(slots * share / sum(tenant_share) * quota))
        for t, share in enumerate(tenant_share)
        if t % 5 != 4  # every fifth tenant has no limit
    }
    n_backlog = int(n_jobs * backlog)
    window = 3600.0  # the rest arrive over the first simulated hour
    arrival = sorted(
        [rng.uniform(-600, 0) for _ in range(n_backlog)]
        + [rng.uniform(0, window) for _ in range(n_jobs - n_backlog)]
    )
    weights = [w for _, w, _, _ in SHAPES]
    jobs, duration, whole = [], [], []
    for i, at in enumerate(arrival):
        _, _, need, big = rng.choices(SHAPES, weights)[0]
        tenant = rng.choices(range(1, n_tenants + 1), tenant_share)[0]
        prio = rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
        created = T0 + timedelta(seconds=round(at, 3))
        jobs.append(QueuedJob(f"j{i:06d}", tenant, prio, created, need))
        duration.append(min(7200.0, rng.lognormvariate(6.2, 0.8) * (2 if big else 1)))
        whole.append(big)
    return Workload(nodes, jobs, arrival, duration, whole, limits)


@dataclass
class Node:
    capacity: Capacity
    running: list[int] = field(default_factory=list)  # job numbers, in start order
    used: Usage = field(default_factory=Usage)
    # The simulation's own count, independent of Capacity.fits and Usage.
    cpus: float = 0.0
    gpus: int = 0
    memory: int = 0
    custom: dict[str, float] = field(default_factory=dict)

    def over(self) -> bool:
        c = self.capacity
        return (
            self.cpus > c.cpus
            or self.gpus > c.gpus
            or self.memory > c.memory_bytes
            or any(v > c.custom.get(k, 0) for k, v in self.custom.items())
        )

    def account(self, need: Resources, sign: int) -> None:
        self.cpus += sign * need.cpus * need.workers
        self.gpus += sign * need.gpus * need.workers
        self.memory += sign * need.memory_bytes * need.workers
        for name, amount in need.custom.items():
            self.custom[name] = self.custom.get(name, 0.0) + sign * amount * need.workers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def simulate(w: Workload, reserve_after: float | None, tick: float, verify: int) -> dict[str, Any]:
    index = QueueIndex(timedelta(seconds=reserve_after) if reserve_after is not None else None)
    nodes = [Node(c) for c in w.nodes]
    queued: dict[str, int] = {}  # job id -> number (for the plain walk's input)
    number = {job.id: i for i, job in enumerate(w.jobs)}
    tenants: Counter[int] = Counter()  # running jobs per tenant, all nodes
    ends: list[tuple[float, int, int]] = []  # (end, job, node)
    started_at = [float("nan")] * len(w.jobs)
    total_cpus = sum(c.cpus for c in w.nodes)
    total_gpus = sum(c.gpus for c in w.nodes)
    decision_ns: list[int] = []
    busy_ns: list[int] = []  # the decisions made while jobs were queued
    checks: dict[str, Any] = {"quota_violations": 0, "node_overcommits": 0, "compared": 0}
    checks.update(mismatches=0, plain_walk_s=[], fast_s=[], stateless_pick_s=[])
    busy: list[tuple[float, float]] = []  # per tick while jobs wait: (cpu, gpu) utilisation
    arrived = finished = 0
    t = min(w.arrival[0], 0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    while finished < len(w.jobs):
        now = T0 + timedelta(seconds=t)
        while ends and ends[0][0] <= t:
            _, job, n = heapq.heappop(ends)
            node = nodes[n]
            node.running.remove(job)
            node.account(w.jobs[job].resources, -1)
            used = Usage()
            for other in node.running:
                used = used.plus(w.jobs[other].resources)
            node.used = used
            tenants[w.jobs[job].tenant_id] -= 1
            finished += 1
        while arrived < len(w.jobs) and w.arrival[arrived] <= t:
            index.add(w.jobs[arrived])
            queued[w.jobs[arrived].id] = arrived
            arrived += 1
        start = int(t / tick) % len(nodes)
        for k in range(len(nodes)):
            n = (start + k) % len(nodes)
            node = nodes[n]
            if verify and (len(decision_ns) + 1) % verify == 0 and queued:
                expected = plain_walk(w, index, nodes, n, queued, now, checks)
            else:
                expected = None
            waiting = len(index) > 0
            begin = time.perf_counter_ns()
            chosen = index.take(node.capacity, node.used, tenants, w.limits, now)
            decision_ns.append(time.perf_counter_ns() - begin)
            if waiting:
                busy_ns.append(decision_ns[-1])
            if expected is not None:
                checks["fast_s"].append(decision_ns[-1] / 1e9)
                checks["mismatches"] += chosen != expected
            for job_id in chosen:
                job = number.pop(job_id)
                del queued[job_id]
                spec = w.jobs[job]
                node.running.append(job)
                node.used = node.used.plus(spec.resources)
                node.account(spec.resources, +1)
                tenants[spec.tenant_id] += 1
                limit = w.limits.get(spec.tenant_id)
                checks["quota_violations"] += limit is not None and tenants[spec.tenant_id] > limit
                started_at[job] = t
                heapq.heappush(ends, (t + w.duration[job], job, n))
            checks["node_overcommits"] += bool(chosen) and node.over()
        if queued:
            busy.append(
                (
                    sum(x.cpus for x in nodes) / total_cpus,
                    sum(x.gpus for x in nodes) / max(total_gpus, 1),
                )
            )
        t += tick
    checks["cpu_seconds"] = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return report(w, started_at, (decision_ns, busy_ns), checks, busy, wall, t)


def plain_walk(
    w: Workload,
    index: QueueIndex,
    nodes: list[Node],
    n: int,
    queued: dict[str, int],
    now: datetime,
    checks: dict[str, Any],
) -> list[str]:
    """The plain walk over the whole state (the baseline), and pick() from the same lists."""
    jobs = [w.jobs[i] for i in queued.values()]
    running = [
        RunningJob(w.jobs[j].id, w.jobs[j].tenant_id, w.jobs[j].resources, m == n)
        for m, node in enumerate(nodes)
        for j in node.running
    ]
    args = (jobs, running, nodes[n].capacity, w.limits, now)
    begin = time.perf_counter()
    expected = pick_reference(*args, reserve_after=index.reserve_after)
    checks["plain_walk_s"].append(time.perf_counter() - begin)
    begin = time.perf_counter()
    stateless = pick(*args, reserve_after=index.reserve_after)
    checks["stateless_pick_s"].append(time.perf_counter() - begin)
    checks["compared"] += 1
    checks["mismatches"] += stateless != expected
    return expected


def report(
    w: Workload,
    started_at: list[float],
    decisions: tuple[list[int], list[int]],
    checks: dict[str, Any],
    busy: list[tuple[float, float]],
    wall: float,
    end: float,
) -> dict[str, Any]:
    waits: dict[str, list[float]] = {}
    for i, job in enumerate(w.jobs):
        wait = started_at[i] - w.arrival[i]
        waits.setdefault(f"priority {job.priority:>4}", []).append(wait)
        if w.whole_node[i]:
            waits.setdefault(f"priority {job.priority:>4}, whole-node jobs", []).append(wait)
            waits.setdefault("whole-node jobs", []).append(wait)
    decision_ns, busy_ns = decisions
    decision_s = sum(decision_ns) / 1e9
    busy_us = [d / 1e3 for d in busy_ns]
    median = statistics.median
    return {
        "jobs": len(w.jobs),
        "finished": sum(1 for s in started_at if s == s),
        "simulated_hours": round(end / 3600, 2),
        "decisions": len(decision_ns),
        "decisions_per_s": round(len(decision_ns) / decision_s),
        "decision_p50_us": round(percentile([d / 1e3 for d in decision_ns], 50), 1),
        "decision_p99_us": round(percentile([d / 1e3 for d in decision_ns], 99), 1),
        "decision_max_ms": round(max(decision_ns) / 1e6, 2),
        "decisions_while_queued": len(busy_ns),
        "decisions_per_s_while_queued": round(len(busy_us) / (sum(busy_us) / 1e6 or 1)),
        "decision_while_queued_p50_us": round(percentile(busy_us, 50), 1),
        "decision_while_queued_p99_us": round(percentile(busy_us, 99), 1),
        "policy_seconds": round(decision_s, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(checks["cpu_seconds"], 1),  # the whole run, checks included
        "cpu_utilisation_while_queued": round(sum(c for c, _ in busy) / max(len(busy), 1), 3),
        "gpu_utilisation_while_queued": round(sum(g for _, g in busy) / max(len(busy), 1), 3),
        "quota_violations": checks["quota_violations"],
        "node_overcommits": checks["node_overcommits"],
        "compared_with_plain_walk": checks["compared"],
        "mismatches": checks["mismatches"],
        "plain_walk_median_ms": round(median(checks["plain_walk_s"]) * 1e3, 1)
        if checks["plain_walk_s"]
        else None,
        "stateless_pick_median_ms": round(median(checks["stateless_pick_s"]) * 1e3, 1)
        if checks["stateless_pick_s"]
        else None,
        "indexed_at_same_decisions_median_us": round(median(checks["fast_s"]) * 1e6, 1)
        if checks["fast_s"]
        else None,
        "wait_minutes": {
            name: {
                "n": len(v),
                "p50": round(percentile(v, 50) / 60, 1),
                "p90": round(percentile(v, 90) / 60, 1),
                "p99": round(percentile(v, 99) / 60, 1),
                "max": round(max(v) / 60, 1),
            }
            for name, v in sorted(waits.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="60 nodes, 3,000 jobs, 10 tenants")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--backlog", type=float, default=0.8, help="share queued at the start")
    parser.add_argument("--tick", type=float, default=10.0, help="seconds between node polls")
    parser.add_argument("--reserve-after", type=float, default=1800.0, help="seconds")
    parser.add_argument("--mode", choices=["off", "on", "both"], default="both")
    parser.add_argument("--verify", type=int, default=50_000, help="compare every Nth decision")
    parser.add_argument("--quota", type=float, default=1.0, help="tenant limits, scaled")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.small:
        args.nodes, args.jobs, args.tenants = 60, 3000, 10
        args.verify = min(args.verify, 500)
    w = workload(args.nodes, args.jobs, args.tenants, args.backlog, args.seed, args.quota)
    results: dict[str, Any] = {"nodes": len(w.nodes), "tenants": args.tenants}
    modes = ["off", "on"] if args.mode == "both" else [args.mode]
    for mode in modes:
        reserve = args.reserve_after if mode == "on" else None
        result = simulate(w, reserve, args.tick, args.verify)
        results[f"reservation {mode}"] = result
        print(f"--- reservation {mode} ---")
        print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    bad = [
        mode
        for mode in modes
        if (r := results[f"reservation {mode}"])["quota_violations"]
        or r["node_overcommits"]
        or r["mismatches"]
        or r["finished"] != r["jobs"]
    ]
    if bad:
        sys.exit(f"invariants broken with reservation {', '.join(bad)}")


if __name__ == "__main__":
    main()
