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

This package stays light: serving imports :mod:`.text` and :mod:`.models`, the control plane
:mod:`.params` (which must not pull in torch). The API names are resolved on first use
(PEP 562) from :mod:`.api` and :mod:`.keras`. Two of them, ``params`` and ``checkpoint``,
are also submodule names: on this package they always mean the API, so import those modules
with ``from nimbus.runtime.params import ...``, never ``import nimbus.runtime.params as x``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """This package's module type: ``params`` and ``checkpoint`` are the API's, even after
    the same-named submodules were imported (the import system sets them as attributes)."""

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = __getattr__("params")
        return params

    @params.setter
    def params(self, value: Any) -> None:
        _submodule_only("params", value)

    @property
    def checkpoint(self) -> Any:
        return __getattr__("checkpoint")

    @checkpoint.setter
    def checkpoint(self, value: Any) -> None:
        _submodule_only("checkpoint", value)


def _submodule_only(name: str, value: Any) -> None:
    if not isinstance(value, types.ModuleType):
        raise AttributeError(f"nr.{name} is read-only")
    # The submodule stays reachable in sys.modules; the attribute keeps meaning the API.


sys.modules[__name__].__class__ = _Package
