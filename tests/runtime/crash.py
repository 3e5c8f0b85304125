"""A reporter that ends a training run after some checkpoints, as a killed process would."""

from __future__ import annotations

from typing import Any

from nimbus.runtime.reporter import MemoryReporter


class CrashAfter(MemoryReporter):
    """Stops the run after ``epochs`` checkpoints, as a killed process would."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.limit = epochs

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        if self.saves == self.limit:
            raise KeyboardInterrupt
