"""Write and read the model directory of docs/model-format.md.

:func:`export_model` writes ``weights.safetensors`` (the state_dict), ``spec.json`` and
``model.onnx`` (softmax included, dynamic batch axis), then runs the ONNX file in ONNX
Runtime on sample inputs and refuses to finish if it disagrees with PyTorch. Nothing is
pickled. Rebuilding a built-in model from such a directory is the runtime's business
(:func:`nimbus.runtime.architectures.load_torch_model`): this package knows the files, not
the architectures.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file
from torch import nn

from nimbus.errors import ExportError, InvalidInput
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE

ONNX_OPSET = 17
TOLERANCE = 1e-4
_DTYPES = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32}


class Probabilities(nn.Module):
    """The exported graph: the model's logits through softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_model(
    model: nn.Module, spec: dict[str, Any], example_input: np.ndarray, out_dir: Path
) -> None:
    """Write ``model`` (logits out) as a model directory in ``out_dir`` and verify it.

    ``example_input`` is a batch of what ``model.onnx`` takes (``spec["onnx_input"]``):
    raw uint8 images, float32 feature rows, or int64 token ids. Raises InvalidInput if it
    does not fit the spec, ExportError if ONNX Runtime disagrees with PyTorch by more
    than 1e-4 on it (checked at its own batch size and at batch size 1).
    """
    example = _check_example(spec, example_input)
    model = model.cpu().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    wrapped = Probabilities(model).eval()
    with torch.no_grad():
        width = wrapped(torch.from_numpy(example)).shape[1]
    if width != len(spec.get("classes") or []):
        raise InvalidInput(f"the model scores {width} classes, the spec names another number")
    _to_onnx(wrapped, torch.from_numpy(example), out_dir / ONNX_FILE)
    verify_onnx(wrapped, (out_dir / ONNX_FILE).read_bytes(), example)


def _to_onnx(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The dynamo exporter needs onnxscript, which Nimbus does not depend on; the
    # TorchScript one handles these small static graphs and warns that it is legacy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def verify_onnx(wrapped: nn.Module, onnx_bytes: bytes, example: np.ndarray) -> None:
    """Raise ExportError unless ONNX Runtime matches ``wrapped`` within 1e-4 on ``example``."""

    def reference(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(wrapped(torch.from_numpy(batch)).numpy())

    verify_onnx_against(reference, onnx_bytes, example, "PyTorch")


def verify_onnx_against(
    reference: Callable[[np.ndarray], np.ndarray],
    onnx_bytes: bytes,
    example: np.ndarray,
    framework: str,
) -> None:
    """Raise ExportError unless ONNX Runtime's ``probabilities`` match ``reference`` (the
    framework's own output on a batch) within 1e-4 on ``example`` and on its first row."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    for batch in (example, example[:1]):
        (got,) = session.run(["probabilities"], {"input": batch})
        want = reference(batch)
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=TOLERANCE):
            worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            raise ExportError(
                f"ONNX Runtime output differs from {framework} by {worst:.3g} (batch {len(batch)})"
            )


def _check_example(spec: dict[str, Any], example_input: np.ndarray) -> np.ndarray:
    signature = spec.get("onnx_input") or {}
    dtype = _DTYPES.get(str(signature.get("datatype")))
    if dtype is None:
        raise InvalidInput(f"spec onnx_input datatype {signature.get('datatype')!r} unsupported")
    example = np.ascontiguousarray(example_input)
    if example.dtype != dtype:
        raise InvalidInput(f"example input is {example.dtype}, the spec says {dtype.__name__}")
    shape = list(signature.get("shape") or [])
    if (
        len(example) == 0
        or example.ndim != len(shape)
        or any(want not in (-1, got) for want, got in zip(shape, example.shape, strict=True))
    ):
        raise InvalidInput(f"example input of shape {list(example.shape)} does not fit {shape}")
    return example
