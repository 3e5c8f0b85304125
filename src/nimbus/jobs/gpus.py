"""Which of this machine's GPUs each attempt gets (the local executors).

The scheduler counts GPUs; the executor names them. A job granted one GPU of eight sees
that one alone (``CUDA_VISIBLE_DEVICES``, its devices numbered in PCI bus order), each of its
workers its own, and two attempts never share one. Without the NVIDIA driver there is
nothing to hand out, and nothing is pinned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver runs


class GpusUnavailable(RuntimeError):
    """Fewer of this machine's GPUs are free than an attempt was granted."""


def machine_gpus(
    proc: Path = NVIDIA_GPUS, environ: Mapping[str, str] = os.environ
) -> tuple[str, ...]:
    """The GPUs this server may hand out, named as ``CUDA_VISIBLE_DEVICES`` names them: the
    server's own ``CUDA_VISIBLE_DEVICES`` where set (up to its first invalid entry, where
    CUDA stops reading it), else ``0`` to ``n-1`` for the driver's ``n``. Reads no torch."""
    try:
        found = sum(1 for _ in proc.iterdir())
    except OSError:
        return ()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return tuple(str(i) for i in range(found))
    ids: list[str] = []
    for part in visible.split(","):
        name = part.strip()
        if not name or name.startswith("-"):
            break
        ids.append(name)
    return tuple(ids[:found])


class GpuSlots:
    """The machine's GPUs and which attempt holds each (in memory: a restarted server has
    killed every attempt of its predecessor before it starts one)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = tuple(ids)
        self._held: dict[str, tuple[str, ...]] = {}

    def take(self, attempt_id: str, per_worker: int, workers: int) -> list[str] | None:
        """Each worker's ``CUDA_VISIBLE_DEVICES``, ``per_worker`` free GPUs apiece, held for
        ``attempt_id`` until :meth:`release`; None where nothing is pinned (no GPU asked for,
        or a machine without the driver, whose jobs run on the CPU whatever they ask)."""
        if per_worker <= 0 or not self.ids:
            return None
        held = {gpu for gpus in self._held.values() for gpu in gpus}
        free = [gpu for gpu in self.ids if gpu not in held]
        want = per_worker * workers
        if len(free) < want:
            raise GpusUnavailable(
                f"the attempt was granted {want} GPUs but {len(free)} of this machine's "
                f"{len(self.ids)} are free"
            )
        self._held[attempt_id] = tuple(free[:want])
        return [
            ",".join(free[rank * per_worker : (rank + 1) * per_worker]) for rank in range(workers)
        ]

    def release(self, attempt_id: str) -> None:
        self._held.pop(attempt_id, None)

    def held(self) -> dict[str, tuple[str, ...]]:
        return dict(self._held)
