"""What one node can run: detected once at start-up (or given), then passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nimbus.errors import InvalidInput
from nimbus.jobs.domain import Resources
from nimbus.jobs.gpus import machine_gpus

_EPSILON = 1e-9  # fractional CPUs add up with rounding error


@dataclass(frozen=True)
class Capacity:
    """The resources of one node that jobs may use; ``custom`` as in
    :attr:`~nimbus.jobs.domain.Resources.custom` (a node without a resource has none of it)."""

    cpus: float
    gpus: int
    memory_bytes: int
    custom: Mapping[str, float] = field(default_factory=dict)

    def fits(self, need: Resources, used: Usage | None = None) -> bool:
        """Whether ``need`` (all its workers) fits next to ``used``."""
        used = used or _NOTHING
        if not (
            used.cpus + need.total_cpus <= self.cpus + _EPSILON
            and used.gpus + need.total_gpus <= self.gpus
            and used.memory_bytes + need.total_memory_bytes <= self.memory_bytes
        ):
            return False
        for name, amount in need.total_custom.items():
            if used.custom.get(name, 0.0) + amount > self.custom.get(name, 0.0) + _EPSILON:
                return False
        return True


@dataclass(frozen=True)
class Usage:
    """Resources in use on a node, the sum of its running jobs."""

    cpus: float = 0.0
    gpus: int = 0
    memory_bytes: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)

    def plus(self, need: Resources) -> Usage:
        custom = self.custom
        if need.total_custom:
            custom = dict(custom)
            for name, amount in need.total_custom.items():
                custom[name] = custom.get(name, 0.0) + amount
        return Usage(
            self.cpus + need.total_cpus,
            self.gpus + need.total_gpus,
            self.memory_bytes + need.total_memory_bytes,
            custom,
        )


_NOTHING = Usage()


def check_request(need: Resources, capacity: Capacity) -> None:
    """Refuse at submit a request that no node could ever provide, naming the resource."""
    per_worker = f" ({need.workers} workers)" if need.workers > 1 else ""
    if need.total_cpus > capacity.cpus + _EPSILON:
        raise InvalidInput(
            f"the job asks for {need.total_cpus:g} cpus{per_worker} but a node has "
            f"{capacity.cpus:g}",
            resource="cpus",
        )
    if need.total_gpus > capacity.gpus:
        raise InvalidInput(
            f"the job asks for {need.total_gpus} gpus{per_worker} but a node has {capacity.gpus}",
            resource="gpus",
        )
    if need.total_memory_bytes > capacity.memory_bytes:
        raise InvalidInput(
            f"the job asks for {need.total_memory_bytes} bytes of memory{per_worker} but a "
            f"node has {capacity.memory_bytes}",
            resource="memory",
        )
    for name, amount in need.total_custom.items():
        have = capacity.custom.get(name, 0.0)
        if amount > have + _EPSILON:
            raise InvalidInput(
                f"the job asks for {amount:g} of resource {name}{per_worker} but a node has "
                f"{have:g}",
                resource=name,
            )


def total_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal from ``/proc/meminfo``; falls back to sysconf where that file is missing."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def detect_capacity(
    *, cpus: float | None = None, gpus: int | None = None, memory_bytes: int | None = None
) -> Capacity:
    """This node's capacity; any value given wins over detection (GPUs: those the driver
    lists, narrowed by ``CUDA_VISIBLE_DEVICES``, :func:`~nimbus.jobs.gpus.machine_gpus`)."""
    return Capacity(
        cpus=float(cpus if cpus is not None else os.cpu_count() or 1),
        gpus=gpus if gpus is not None else len(machine_gpus()),
        memory_bytes=memory_bytes if memory_bytes is not None else total_memory_bytes(),
    )
