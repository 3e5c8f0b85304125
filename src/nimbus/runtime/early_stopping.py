"""Early stopping on the validation split, keeping the best epoch's weights.

After each epoch the trainer hands :meth:`BestEpoch.update` the epoch's record; the
weights of the best epoch so far are kept (a CPU clone), and once ``patience`` epochs in
a row have not improved on it the run stops. "Better" is judged by ``monitor``:
``val_loss`` (lower wins) or ``val_accuracy`` (higher wins, a lower ``val_loss``
breaking ties, since accuracy on a small split moves in coarse steps and often stays
level while the model still improves). The whole state goes into the run's checkpoint,
so a resumed run stops, and keeps, exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from nimbus.errors import InvalidInput
from nimbus.runtime.checkpoints import clone_tree

MONITORS = ("val_accuracy", "val_loss")


class BestEpoch:
    """The best epoch so far by ``monitor``, its weights, and when to stop."""

    def __init__(self, monitor: str, patience: int) -> None:
        if monitor not in MONITORS:
            raise InvalidInput(f"monitor must be one of {', '.join(MONITORS)}")
        self.monitor, self.patience = monitor, patience
        self.epoch = 0  # the best epoch (0: none yet)
        self.score: tuple[float, float] | None = None  # larger is better
        self.weights: dict[str, Any] | None = None
        self.waited = 0  # epochs since the best one

    def update(self, epoch: int, record: dict[str, float], model: nn.Module) -> bool:
        """Weigh ``epoch``'s record; keep ``model``'s weights if it is the best so far.
        Returns whether it was. A record without validation figures is never the best."""
        score = self._score(record)
        if score is not None and (self.score is None or score > self.score):
            self.epoch, self.score, self.waited = epoch, score, 0
            self.weights = clone_tree(model.state_dict())
            return True
        self.waited += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row have not improved (never with patience 0)."""
        return self.patience > 0 and self.epoch > 0 and self.waited >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best epoch's weights into ``model``; False if there is none."""
        if self.weights is None:
            return False
        model.load_state_dict(self.weights)
        return True

    def state(self) -> dict[str, Any]:
        """For the checkpoint (tensors are already CPU clones)."""
        return {
            "epoch": self.epoch,
            "score": None if self.score is None else list(self.score),
            "waited": self.waited,
            "weights": self.weights,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Take over a :meth:`state` read back from a checkpoint."""
        self.epoch, self.waited = int(state["epoch"]), int(state["waited"])
        score = state["score"]
        self.score = None if score is None else (float(score[0]), float(score[1]))
        self.weights = state["weights"]

    def _score(self, record: dict[str, float]) -> tuple[float, float] | None:
        loss = record.get("val_loss")
        if loss is None or not math.isfinite(loss):
            return None
        if self.monitor == "val_loss":
            return (-loss, 0.0)
        return (record["val_accuracy"], -loss)
