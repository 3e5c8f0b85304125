"""PyTorch backend: the built-in architecture rebuilt from spec.json, weights from safetensors.

Nothing is unpickled: the module comes from ``nimbus.runtime.architectures.build_model`` and its
parameters from ``weights.safetensors``. Built-in modules return logits; softmax is applied
here so the output matches ``model.onnx``. Torch's thread count is process-wide, which is fine
for a replica process serving one model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nimbus.errors import InvalidInput
from nimbus.modelformat.files import WEIGHTS_FILE
from nimbus.modelformat.spec import ModelSpec
from nimbus.runtime.architectures import build_model


class TorchBackend:
    """Eager PyTorch inference over a module that maps raw inputs to logits."""

    platform = "pytorch"

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module.eval()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        # torch.from_numpy wants writable memory; binary request tensors are read-only views.
        tensor = torch.from_numpy(np.require(inputs, requirements=["C", "W"]))
        with torch.inference_mode():
            logits = self._module(tensor)
            return torch.softmax(logits.float(), dim=-1).numpy()


def load(model_dir: Path, spec: ModelSpec, threads: int) -> TorchBackend:
    """Rebuild the module named by ``spec.architecture`` and fill it from the weights file."""
    path = model_dir / WEIGHTS_FILE
    if spec.imported is not None:
        raise InvalidInput("an imported model has no PyTorch weights: serve it with runtime onnx")
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    torch.set_num_threads(threads)
    module = build_model(dict(spec.raw))
    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise InvalidInput(f"{path} does not fit the {spec.architecture} spec: {exc}") from None
    return TorchBackend(module)
