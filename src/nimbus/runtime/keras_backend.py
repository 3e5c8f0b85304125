"""Keras 3's backend in Nimbus: PyTorch for scripts that ``import keras`` as every tutorial
does, TensorFlow for TensorFlow programs (``import tensorflow as tf`` then ``tf.keras``).

Keras picks its backend once, when it is first imported: ``KERAS_BACKEND``, else the
``backend`` of ``$KERAS_HOME/keras.json`` (``~/.keras``), else TensorFlow, which the platform
does not install (a job adds it with ``--requirements``, docs/environments.md).
:func:`torch_by_default` installs an import hook that, at the moment ``keras`` is first
imported, sets ``KERAS_BACKEND`` unless a backend was chosen by then (the variable set, in
the environment or by the script before its import, or another backend named in
``keras.json``: Keras writes ``"tensorflow"`` there on its first run by itself, which is no
choice). What it sets is :func:`default_backend`'s answer: ``tensorflow`` when TensorFlow is
imported or being imported (``import tensorflow`` imports Keras 3 as ``tf.keras`` from its
``__init__``, and a TensorFlow program's ``tf.keras`` model must be a TensorFlow one, which
tf2onnx exports), otherwise ``torch``. Importing :mod:`nimbus.runtime` installs it, so it is
in place before a job's script runs, and locally for a script that imports Nimbus before
Keras. A local ``python script.py`` that imports Keras first runs before any of this: it
needs ``KERAS_BACKEND=torch`` in its environment (:data:`HINT`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Container, Sequence
from pathlib import Path
from types import ModuleType

VARIABLE = "KERAS_BACKEND"
BACKEND = "torch"
HINT = (
    "TensorFlow is not part of the platform: a TensorFlow program runs as a job with "
    "--requirements holding tensorflow-cpu and tf2onnx (docs/environments.md); Keras alone "
    "runs on PyTorch in Nimbus: set KERAS_BACKEND=torch before keras is imported "
    "(KERAS_BACKEND=torch python script.py, or os.environ.setdefault('KERAS_BACKEND', "
    "'torch') above `import keras`)"
)
TENSORFLOW = "tensorflow"


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
    return backend if isinstance(backend, str) and backend != TENSORFLOW else None


def default_backend(modules: Container[str]) -> str:
    """The backend for a Keras imported without a choice, given the names in
    ``sys.modules``: TensorFlow's once TensorFlow is (being) imported, else torch."""
    return TENSORFLOW if TENSORFLOW in modules else BACKEND


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
                os.environ[VARIABLE] = default_backend(sys.modules)
            uninstall()
        return None


def torch_by_default() -> None:
    """Make torch Keras's backend (TensorFlow's for a TensorFlow program) unless the user
    chooses another before importing keras (see the module docstring). Does nothing once
    keras is imported."""
    if "keras" in sys.modules or any(isinstance(f, _TorchByDefault) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchByDefault())


def uninstall() -> None:
    """Remove the hook (once keras is imported it has nothing left to do)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchByDefault)]
