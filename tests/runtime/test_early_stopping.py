from __future__ import annotations

import pytest
import torch
from torch import nn

from nimbus.errors import InvalidInput
from nimbus.runtime.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes
from nimbus.runtime.early_stopping import BestEpoch


def _record(accuracy: float, loss: float) -> dict[str, float]:
    return {"train_loss": 0.1, "val_accuracy": accuracy, "val_loss": loss}


def test_accuracy_wins_and_loss_breaks_ties() -> None:
    model = nn.Linear(2, 2)
    best = BestEpoch("val_accuracy", patience=2)
    assert best.update(1, _record(0.5, 1.0), model)
    with torch.no_grad():
        model.weight.fill_(7.0)
    assert best.update(2, _record(0.5, 0.9), model)  # same accuracy, lower loss
    assert not best.update(3, _record(0.5, 0.95), model)
    assert not best.should_stop
    assert not best.update(4, _record(0.4, 0.5), model)  # lower loss, worse accuracy
    assert best.should_stop and best.epoch == 2

    with torch.no_grad():
        model.weight.zero_()
    assert best.restore(model) and torch.all(model.weight == 7.0)


def test_state_survives_a_checkpoint_and_nothing_without_val() -> None:
    best = BestEpoch("val_loss", patience=0)
    assert not best.update(1, {"train_loss": 0.3}, nn.Linear(2, 2))  # no val split
    assert not best.restore(nn.Linear(2, 2)) and not best.should_stop
    best.update(2, _record(0.1, 2.0), nn.Linear(2, 2))
    best.update(3, _record(0.9, 3.0), nn.Linear(2, 2))  # val_loss monitors: worse
    again = BestEpoch("val_loss", patience=0)
    again.load(checkpoint_from_bytes(checkpoint_to_bytes({"best": best.state()}))["best"])
    assert (again.epoch, again.score, again.waited) == (2, best.score, 1)
    assert again.weights is not None and again.weights.keys() == {"weight", "bias"}
    with pytest.raises(InvalidInput):
        BestEpoch("train_loss", patience=1)
