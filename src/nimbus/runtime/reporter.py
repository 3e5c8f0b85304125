"""How the trainer talks to the outside world: the :class:`Reporter` interface.

The job process implements it over HTTP to the control plane (metrics, progress,
checkpoint blobs); :class:`MemoryReporter` keeps everything in memory, for tests and
for running the trainer in-process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from nimbus.runtime.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes


class Reporter(Protocol):
    """What a training run reports to, and resumes from.

    With several data-parallel workers, only rank 0 calls ``log``, ``progress`` and
    ``save_checkpoint``; every rank calls ``load_checkpoint`` and must get the same state.
    """

    def log(self, step: int, **metrics: float) -> None:
        """Record metric values at ``step`` (the epoch number, from 1)."""

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        """Called after every train batch; implementations throttle as they see fit.

        Neither ``log`` nor ``progress`` may wait for the outside world: training goes on
        while they are delivered (the job API's reporter posts from a background thread)."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Store ``state`` (see :func:`checkpoint_to_bytes`), replacing the last. What it
        keeps is copied before it returns: the caller may go on changing its tensors."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved state of this job (from an earlier attempt), or None."""


@dataclass
class MemoryReporter:
    """Keeps metrics, progress and the latest checkpoint (as bytes) in memory.

    Checkpoints pass through :func:`checkpoint_to_bytes` and back, exactly as they would
    through a blob store, so a resume from a MemoryReporter tests the real round trip.
    """

    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    progress_calls: int = 0
    checkpoint: bytes | None = None
    saves: int = 0

    def log(self, step: int, **metrics: float) -> None:
        self.metrics.append((step, dict(metrics)))

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        self.progress_calls += 1

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoint = checkpoint_to_bytes(state)
        self.saves += 1

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None if self.checkpoint is None else checkpoint_from_bytes(self.checkpoint)

    def series(self, name: str) -> list[float]:
        """The logged values of one metric, in step order."""
        return [m[name] for _, m in self.metrics if name in m]
