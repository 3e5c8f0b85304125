"""Inference backends: one module per runtime behind the one-method :class:`Backend` interface.

The runtime is chosen here, by name, and nowhere else. Backend modules are imported on first
use so that serving an ONNX model never imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from nimbus.errors import InvalidInput
from nimbus.modelformat.spec import ModelSpec


class Backend(Protocol):
    """Runs a model: a batch of model inputs (``spec.onnx_input``) in, probabilities out."""

    platform: str

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Return FP32 ``[rows, classes]`` probabilities for ``rows`` inputs. Thread-safe."""
        ...


class BackendLoader(Protocol):
    def __call__(self, model_dir: Path, spec: ModelSpec, threads: int) -> Backend: ...


# runtime name -> "module:loader" (imported lazily: torch is heavy and optional at the edge)
RUNTIMES: dict[str, str] = {
    "onnx": "nimbus.serving.backends.onnx:load",
    "torch": "nimbus.serving.backends.torch:load",
}


def load_backend(runtime: str, model_dir: Path, spec: ModelSpec, threads: int = 1) -> Backend:
    """Load ``model_dir`` with the named runtime (``onnx`` or ``torch``)."""
    target = RUNTIMES.get(runtime)
    if target is None:
        known = ", ".join(sorted(RUNTIMES))
        raise InvalidInput(f"unknown runtime {runtime!r}; choose one of {known}")
    if threads < 1:
        raise InvalidInput("threads must be at least 1")
    module_name, _, attr = target.partition(":")
    loader: BackendLoader = getattr(importlib.import_module(module_name), attr)
    return loader(Path(model_dir), spec, threads)
