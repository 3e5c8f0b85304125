"""A user's own model (a torch ``nn.Module``, a Keras 3 model on the torch backend, or a
TensorFlow program's ``tf.keras`` model, :mod:`nimbus.runtime.tf_export`) as a model
directory of docs/model-format.md, and scoring a model directory on a split.

The exported graph takes the raw input as the dataset holds it, like the built-ins', so a
deployment serves it unchanged: uint8 ``[N, H, W, C]`` images (scale inside the model,
e.g. ``keras.layers.Rescaling``), float32 ``[N, F]`` rows, or for text int64 token ids
``[N, max_len]`` plus the ``preprocessing`` block of the
:class:`~nimbus.modelformat.text.TextEncoder` that made them (the server tokenises).
The model may end in logits or in probabilities (a softmax); ``model.onnx`` always outputs
probabilities. Nothing is pickled: weights are safetensors, the spec JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file
from torch import nn

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.modelformat.export import ONNX_OPSET, verify_onnx
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from nimbus.modelformat.program import ProgramError, write_checked_program
from nimbus.modelformat.text import TextEncoder
from nimbus.runtime.builtins import FORMAT_VERSION
from nimbus.runtime.data import DataSplits
from nimbus.runtime.evaluation import evaluate
from nimbus.runtime.fairness import with_fairness
from nimbus.runtime.tf_export import export_onnx, is_tensorflow_keras, scores, weights

Output = Literal["auto", "logits", "probabilities"]
EVAL_BATCH = 512
_DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float32): "FP32",
}


class Scores(nn.Module):
    """The exported graph: the user's model, plus a softmax when it ends in logits."""

    def __init__(self, model: nn.Module, softmax: bool) -> None:
        super().__init__()
        self.model, self.softmax = model, softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.softmax else out


class Logits(nn.Module):
    """A model ending in probabilities, as logits (their log): softmax gives them back."""

    def __init__(self, scores: Scores) -> None:
        super().__init__()
        self.model = scores.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.model(x).clamp_min(1e-12))


def export_custom(
    model: Any,
    example_input: Any,
    data: DataSplits,
    out_dir: Path,
    *,
    preprocessing: dict[str, Any] | None = None,
    output: Output = "auto",
) -> dict[str, Any]:
    """Write ``model`` as a verified model directory in ``out_dir``; returns its spec.json.

    ``example_input`` is a small batch of what the model takes (see the module docstring);
    ONNX Runtime must match PyTorch (TensorFlow) on it within 1e-4 or an ExportError is
    raised.
    """
    example = _as_array(example_input)
    spec = custom_spec(example, data, preprocessing)
    if is_tensorflow_keras(model):
        _export_tensorflow(model, example, spec, len(data.classes), out_dir, output)
        return spec
    module = _as_module(model)
    with _exporting(module, is_keras=_is_keras(model)):
        _export(model, module, example, spec, len(data.classes), out_dir, output)
    return spec


def _export(
    model: Any,
    module: nn.Module,
    example: np.ndarray,
    spec: dict[str, Any],
    classes: int,
    out_dir: Path,
    output: Output,
) -> None:
    with torch.no_grad():
        out = module(torch.from_numpy(example))
    if not isinstance(out, torch.Tensor):
        _check_scores(type(out).__name__, len(example), classes)
    _check_scores(tuple(out.shape), len(example), classes)
    wrapped = Scores(module, softmax=_needs_softmax(out.float(), output)).eval()
    _write_files(out_dir, spec, _weights(model, module), "pt")
    with warnings.catch_warnings():
        # The TorchScript exporter (no onnxscript dependency) warns that it is legacy, and
        # tracing Keras layers warns about Python values it records as constants.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (torch.from_numpy(example),),
            str(out_dir / ONNX_FILE),
            dynamo=False,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    verify_onnx(wrapped, (out_dir / ONNX_FILE).read_bytes(), example)
    if _is_keras(model):
        print(
            "explanations: occlusion/Shapley only (the gradient program is written for "
            "torch modules)"
        )
        return
    try:
        write_checked_program(
            Logits(wrapped) if not wrapped.softmax else module,
            example,
            out_dir,
            token_ids=spec["task"] == str(Task.TEXT),
        )
    except ProgramError as exc:
        print(f"explanations: occlusion/Shapley only, no gradient program: {exc}")
    else:
        print("explanations: integrated gradients available (program.json)")


def _export_tensorflow(
    model: Any,
    example: np.ndarray,
    spec: dict[str, Any],
    classes: int,
    out_dir: Path,
    output: Output,
) -> None:
    out = scores(model, example)
    _check_scores(out.shape, len(example), classes)
    softmax = _needs_softmax(torch.from_numpy(out), output)
    tensors = {name: torch.from_numpy(value) for name, value in weights(model).items()}
    _write_files(out_dir, spec, tensors, "tf")
    export_onnx(model, example, softmax, out_dir / ONNX_FILE)


def _check_scores(shape: tuple[int, ...] | str, batch: int, classes: int) -> None:
    if shape != (batch, classes):
        raise InvalidInput(
            f"the model must map a batch to one score per class: [{batch}, {classes}], got {shape}"
        )


def _write_files(
    out_dir: Path, spec: dict[str, Any], tensors: dict[str, torch.Tensor], framework: str
) -> None:
    """A fresh ``out_dir`` with the weights (safetensors) and spec.json."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": framework})
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


@contextmanager
def _exporting(module: nn.Module, is_keras: bool) -> Iterator[None]:
    """Eval mode on the CPU while exporting; the user's model is put back as it was."""
    training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type != "cpu" and not is_keras:  # Keras places its variables itself
        module.cpu()
    module.eval()
    try:
        yield
    finally:
        module.train(training)
        if device.type != "cpu" and not is_keras:
            module.to(device)


def custom_spec(
    example: np.ndarray, data: DataSplits, preprocessing: dict[str, Any] | None
) -> dict[str, Any]:
    """spec.json for a custom model taking ``example``-like batches on ``data``'s task."""
    onnx_input = {
        "name": "input",
        "datatype": _DATATYPES[example.dtype],
        "shape": [-1, *example.shape[1:]],
    }
    shape = list(data.train.x.shape[1:])
    if data.task is Task.IMAGE:
        _expect(example, np.uint8, shape, "raw images, uint8 [N, H, W, C]")
        height, width, channels = shape
        block = {"kind": "image", "height": height, "width": width, "channels": channels}
        if data.image_transform is not None:
            block["transform"] = dict(data.image_transform)
        model_input = onnx_input
    elif data.task is Task.TABULAR:
        _expect(example, np.float32, shape, "feature rows, float32 [N, F]")
        features = data.features or [f"f{i}" for i in range(shape[0])]
        block = {"kind": "tabular", "features": list(features)}
        model_input = onnx_input
    else:
        if preprocessing is None or preprocessing.get("kind") != "text":
            raise InvalidInput(
                "a text model takes token ids: pass preprocessing=encoder.preprocessing() "
                "of the nimbus.modelformat.text.TextEncoder that made them"
            )
        encoder = TextEncoder.from_preprocessing(preprocessing)
        _expect(example, np.int64, [encoder.max_len], "token ids, int64 [N, max_len]")
        block = encoder.preprocessing()
        model_input = {"name": "input", "datatype": "BYTES", "shape": [-1]}
    if preprocessing is not None and data.task is not Task.TEXT:
        block = {**block, **preprocessing}
    return {
        "format_version": FORMAT_VERSION,
        "task": str(data.task),
        "architecture": "custom",
        "arch_params": {},
        "classes": [str(c) for c in data.classes],
        "input": model_input,
        "onnx_input": onnx_input,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(data.classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "preprocessing": block,
    }


def evaluate_model_dir(model_dir: Path, data: DataSplits, split: str = "test") -> dict[str, Any]:
    """Score ``model.onnx`` of ``model_dir`` on ``split`` with ONNX Runtime (evaluate())."""
    spec = json.loads((model_dir / SPEC_FILE).read_text(encoding="utf-8"))
    x, y = getattr(data, split).x, getattr(data, split).y
    encoder = (
        TextEncoder.from_preprocessing(spec["preprocessing"])
        if spec["input"]["datatype"] == "BYTES"
        else None
    )
    dtype: np.dtype[Any] = {v: k for k, v in _DATATYPES.items()}[spec["onnx_input"]["datatype"]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )
    predictions = []
    for start in range(0, len(y), EVAL_BATCH):
        rows = np.asarray(x[start : start + EVAL_BATCH])
        batch = encoder.encode(rows) if encoder else np.ascontiguousarray(rows, dtype=dtype)
        (probabilities,) = session.run(["probabilities"], {"input": batch})
        predictions.append(np.asarray(probabilities))
    scores = np.concatenate(predictions)
    predicted = scores.argmax(axis=1)
    evaluation = evaluate(np.asarray(y), predicted, data.classes, scores)
    return with_fairness(evaluation, data, predicted) if split == "test" else evaluation


def _as_module(model: Any) -> nn.Module:
    if _is_keras(model) and sys.modules["keras"].backend.backend() != "torch":
        raise InvalidInput(
            "save_model takes Keras 3 models on the torch or the TensorFlow backend, not "
            f"{sys.modules['keras'].backend.backend()}: set KERAS_BACKEND=torch before "
            "importing keras, or import tensorflow first for tf.keras"
        )
    if not isinstance(model, nn.Module):
        raise InvalidInput(
            "save_model takes a torch nn.Module, a Keras 3 model or a TensorFlow program's "
            f"tf.keras model, not {type(model).__name__}"
        )
    return model


def _is_keras(model: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.Model)


def _weights(model: Any, module: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict names for torch modules; variable paths (``dense/kernel``) for Keras."""
    if _is_keras(model):
        pairs = [(v.path, v.value) for v in model.weights]
    else:
        pairs = list(module.state_dict().items())
    return {name: torch.as_tensor(t).detach().cpu().contiguous().clone() for name, t in pairs}


def _as_array(example: Any) -> np.ndarray:
    if isinstance(example, torch.Tensor):
        example = example.detach().cpu().numpy()
    array = np.array(example, order="C")  # a writable copy: memmaps are read-only
    if array.dtype not in _DATATYPES:
        raise InvalidInput(
            f"example_input of dtype {array.dtype}: models take uint8 images, float32 rows "
            "or int64 token ids"
        )
    if array.ndim < 2 or len(array) == 0:
        raise InvalidInput("example_input is a batch: [N, ...] with N >= 1")
    return array


def _expect(example: np.ndarray, dtype: type, shape: list[int], what: str) -> None:
    if example.dtype != np.dtype(dtype) or list(example.shape[1:]) != list(shape):
        raise InvalidInput(
            f"the model must take the dataset's {what}: [N, {', '.join(map(str, shape))}] "
            f"{np.dtype(dtype)}, got example_input {list(example.shape)} {example.dtype}"
        )


def _needs_softmax(out: torch.Tensor, output: Output) -> bool:
    if output == "logits":
        return True
    if output == "probabilities":
        return False
    if output != "auto":
        raise InvalidInput(f"output must be auto, logits or probabilities, not {output!r}")
    sums = out.sum(dim=1)
    looks_like_probabilities = bool((out >= 0).all()) and bool(
        torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
    )
    return not looks_like_probabilities
