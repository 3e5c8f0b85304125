"""Keras 3 on PyTorch by default, for scripts that ``import keras`` as every tutorial does.

Keras picks its backend once, when it is first imported: ``KERAS_BACKEND``, else the
``backend`` of ``$KERAS_HOME/keras.json`` (``~/.keras``), else TensorFlow, which Nimbus does
not install (and which its exporter cannot use). :func:`torch_by_default` installs an import
hook that, at the moment ``keras`` is first imported, sets ``KERAS_BACKEND=torch`` unless a
backend was chosen by then: the variable set (in the environment, or by the script before its
import), or another backend named in ``keras.json`` (Keras writes ``"tensorflow"`` there on
its first run by itself, which is no choice). Importing :mod:`nimbus.runtime` installs it, so
it is in place before a job's script runs, and locally for a script that imports Nimbus
before Keras. A local ``python script.py`` that imports Keras first runs before any of this:
it needs ``KERAS_BACKEND=torch`` in its environment (:data:`HINT`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

VARIABLE = "KERAS_BACKEND"
BACKEND = "torch"
HINT = (
    "Keras runs on PyTorch in Nimbus: set KERAS_BACKEND=torch before keras is imported "
    "(KERAS_BACKEND=torch python script.py, or os.environ.setdefault('KERAS_BACKEND', "
    "'torch') above `import keras`)"
)


def chosen_backend(environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The backend the user chose: ``KERAS_BACKEND``, or one other than TensorFlow named in
    ``keras.json``; None when nothing was chosen."""
    if environ.get(VARIABLE):
        return environ[VARIABLE]
    home = Path(environ.get("KERAS_HOME") or Path(environ.get("HOME") or "~") / ".keras")
    try:
        config = json.loads((home.expanduser() / "keras.json").read_text())
    except (OSError, ValueError):
        return None
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend != "tensorflow" else None


class _TorchByDefault(importlib.abc.MetaPathFinder):
    """Finds nothing; on the first import of ``keras``, sets the default backend."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "keras":
            if chosen_backend(os.environ) is None:
                os.environ[VARIABLE] = BACKEND
            uninstall()
        return None


def torch_by_default() -> None:
    """Make torch Keras's backend unless the user chooses another before importing keras
    (see the module docstring). Does nothing once keras is imported."""
    if "keras" in sys.modules or any(isinstance(f, _TorchByDefault) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchByDefault())


def uninstall() -> None:
    """Remove the hook (once keras is imported it has nothing left to do)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchByDefault)]
