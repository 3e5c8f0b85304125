"""Keras 3 in a Nimbus job: :class:`KerasCallback` and :func:`keras_initial_epoch`.

Keras runs on its torch backend, or on TensorFlow's in a TensorFlow program (``tf.keras``
after ``import tensorflow``; the backend is chosen when keras is first imported, see
:mod:`nimbus.runtime.keras_backend`); the callback works the same on both::

    model.fit(x, y, epochs=10, initial_epoch=nr.keras_initial_epoch(),
              callbacks=[nr.KerasCallback()])

What *resume* means for Keras: after every epoch the callback logs Keras's epoch logs
(``loss``, ``accuracy``, ``val_*``) through ``nr.log`` and checkpoints the model's weights
and the optimizer's variables (its step count included, so schedules go on). A later
attempt restores both in ``on_train_begin``, and ``initial_epoch`` makes ``fit`` skip the
epochs already done. Unlike the built-in models, the run is not bit-identical to one that
never stopped: Keras's shuffling and dropout RNG state is not part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch

from nimbus.errors import InvalidInput
from nimbus.runtime import api

CHECKPOINT_FORMAT = "nimbus-keras/1"

__all__ = ["CHECKPOINT_FORMAT", "KerasCallback", "keras_initial_epoch"]


def keras_initial_epoch() -> int:
    """Epochs already done by earlier attempts of this job (0 on a fresh start): pass it
    as ``model.fit(..., initial_epoch=...)``."""
    state = api.restore()
    return int(state["epoch"]) if state is not None and _is_keras_state(state) else 0


# keras ships no type information, so mypy sees its Callback as Any.
class KerasCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Logs every epoch through ``nr.log``, reports batch progress, checkpoints each epoch
    and restores the latest checkpoint when training begins (see the module docstring)."""

    def __init__(self, *, checkpoint: bool = True) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self._epoch = 1

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        state = api.restore()
        if state is None or not _is_keras_state(state):
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        _assign(self.model.weights, state["weights"], "model weights")
        if optimizer is not None and state.get("optimizer"):
            _assign(optimizer.variables, state["optimizer"], "optimizer variables")
        print(f"restored the Keras model and optimizer after epoch {state['epoch']}", flush=True)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        params = self.params or {}
        api.progress(
            self._epoch, int(params.get("epochs") or 0), batch + 1, int(params.get("steps") or 0)
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        api.log(epoch + 1, **metrics)
        if self.checkpoint:
            optimizer = self.model.optimizer
            api.checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "weights": _values(self.model.weights),
                    "optimizer": _values(optimizer.variables) if optimizer is not None else [],
                },
                step=epoch + 1,
            )


def _is_keras_state(state: dict[str, Any]) -> bool:
    return state.get("format") == CHECKPOINT_FORMAT


def _values(variables: list[Any]) -> list[torch.Tensor]:
    """Each variable's value as a CPU torch tensor (what checkpoints hold), whichever the
    backend: a torch tensor on torch, a TensorFlow variable on TensorFlow."""
    return [torch.from_numpy(np.array(keras.ops.convert_to_numpy(v.value))) for v in variables]


def _assign(variables: list[Any], values: list[torch.Tensor], what: str) -> None:
    shapes = [tuple(v.shape) for v in variables]
    saved = [tuple(t.shape) for t in values]
    if shapes != saved:
        raise InvalidInput(f"the checkpoint's {what} do not fit this model: {saved} vs {shapes}")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value.numpy())


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
