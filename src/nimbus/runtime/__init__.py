"""What runs inside a job: the ``nr`` API, built-in models, their parameters, the trainer,
evaluation, and the job entry point (``python -m nimbus.runtime.entry``).

Training scripts use it as ``from nimbus import runtime as nr``::

    nr.params                      # dict: the job's params
    data = nr.dataset()            # .classes, .task, .train/.val/.test (.x, .y, .torch())
    nr.log(epoch, loss=0.3)        # metrics
    nr.progress(epoch, epochs, batch, batches)
    nr.checkpoint(state); nr.restore()
    nr.save_model(model, example_input)
    nr.evaluate(y_true, y_pred)
    nr.KerasCallback(); nr.keras_initial_epoch()

This package stays light: serving imports :mod:`.architectures`, the control plane
:mod:`.hyperparams` (which must not pull in torch). The API names are resolved on first use
(PEP 562) from :mod:`.api` and :mod:`.keras`; no submodule shares a name with them.
Importing it makes torch Keras's default backend (:mod:`.keras_backend`).
"""

from __future__ import annotations

import importlib
from typing import Any

from nimbus.runtime.keras_backend import torch_by_default

_API = "nimbus.runtime.api"
_KERAS = "nimbus.runtime.keras"
_LAZY = {
    "params": _API,
    "dataset": _API,
    "log": _API,
    "progress": _API,
    "checkpoint": _API,
    "restore": _API,
    "save_model": _API,
    "evaluate": _API,
    "KerasCallback": _KERAS,
    "keras_initial_epoch": _KERAS,
}
__all__ = sorted(_LAZY)

# Before the script's `import keras`: Keras chooses its backend then, once (a job's script,
# and a local one that imports Nimbus first, get torch unless they chose another).
torch_by_default()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
