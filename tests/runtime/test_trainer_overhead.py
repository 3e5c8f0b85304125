"""What the trainer's deterministic mode costs: deterministic kernels, but no NaN-filling of
every new tensor (torch's default in that mode, a debugging aid that cost ~6% of a CNN step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train
from tests.runtime import synthetic


@dataclass
class ModeSpy(MemoryReporter):
    """Records torch's modes as the trainer runs its steps."""

    modes: set[tuple[bool, bool]] = field(default_factory=set)

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        self.modes.add(
            (
                torch.are_deterministic_algorithms_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
            )
        )
        super().progress(epoch, total_epochs, batch, total_batches)


def test_training_is_deterministic_without_filling_new_memory() -> None:
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
    )
    spy = ModeSpy()
    train("cnn", synthetic.digits(), {"epochs": 1, "batch_size": 256}, spy)
    assert spy.modes == {(True, False)}
    after = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,  # type: ignore[attr-defined]
    )
    assert after == before  # the caller's settings, restored
