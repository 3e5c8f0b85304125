"""Model directories for the serving tests, written as docs/model-format.md describes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from nimbus.runtime.architectures import build_model

IMAGE_SHAPE = (6, 6, 1)
TEXT_VOCAB = ["<pad>", "<unk>", "good", "bad", "great", "awful", "movie", "plot"]
TEXT_MAX_LEN = 8


class _Softmax(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x), dim=-1)


def write_model_dir(directory: Path, spec: dict[str, Any], example: torch.Tensor) -> Path:
    """spec.json + weights.safetensors + model.onnx (softmax in the graph, dynamic batch)."""
    torch.manual_seed(0)
    module = build_model(spec).eval()
    with torch.no_grad():  # spread the weights so classes differ clearly
        for p in module.parameters():
            p.mul_(3.0)
    directory.mkdir(parents=True)
    (directory / "spec.json").write_text(json.dumps(spec))
    save_file(module.state_dict(), str(directory / "weights.safetensors"))
    with warnings.catch_warnings():
        # The TorchScript exporter (the dynamo one needs onnxscript, not a dependency of
        # Nimbus) warns that it is legacy, as in nimbus.modelformat.export.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Softmax(module),
            (example,),
            str(directory / "model.onnx"),
            input_names=[spec["onnx_input"]["name"]],
            output_names=["probabilities"],
            dynamic_axes={spec["onnx_input"]["name"]: {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return directory


def _outputs(classes: int) -> list[dict[str, Any]]:
    return [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]


@pytest.fixture(scope="session")
def image_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h, w, c = IMAGE_SHAPE
    signature = {"name": "input", "datatype": "UINT8", "shape": [-1, h, w, c]}
    spec = {
        "format_version": 1,
        "task": "image-classification",
        "architecture": "cnn",
        "arch_params": {
            "in_channels": c,
            "height": h,
            "width": w,
            "num_classes": 3,
            "conv_channels": 4,
            "hidden": 8,
        },
        "classes": ["cat", "dog", "eel"],
        "input": signature,
        "onnx_input": signature,
        "outputs": _outputs(3),
        "preprocessing": {
            "kind": "image",
            "scale": 1 / 255,
            "mean": [0.5],
            "std": [0.25],
            "height": h,
            "width": w,
            "channels": c,
        },
    }
    example = torch.zeros((1, h, w, c), dtype=torch.uint8)
    return write_model_dir(tmp_path_factory.mktemp("models") / "cnn", spec, example)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = {
        "format_version": 1,
        "task": "text-classification",
        "architecture": "text",
        "arch_params": {"vocab_size": len(TEXT_VOCAB), "embed_dim": 4, "num_classes": 2},
        "classes": ["neg", "pos"],
        "input": {"name": "text", "datatype": "BYTES", "shape": [-1]},
        "onnx_input": {"name": "text", "datatype": "INT64", "shape": [-1, TEXT_MAX_LEN]},
        "outputs": _outputs(2),
        "preprocessing": {
            "kind": "text",
            "lowercase": True,
            "max_len": TEXT_MAX_LEN,
            "vocab": TEXT_VOCAB,
        },
    }
    example = torch.ones((1, TEXT_MAX_LEN), dtype=torch.int64)
    return write_model_dir(tmp_path_factory.mktemp("models") / "text", spec, example)


@pytest.fixture(scope="session")
def tabular_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    signature = {"name": "features", "datatype": "FP32", "shape": [-1, 3]}
    spec = {
        "format_version": 1,
        "task": "tabular-classification",
        "architecture": "mlp",
        "arch_params": {"in_features": 3, "num_classes": 2, "hidden": [4]},
        "classes": ["no", "yes"],
        "input": signature,
        "onnx_input": signature,
        "outputs": _outputs(2),
        "preprocessing": {
            "kind": "tabular",
            "features": ["a", "b", "c"],
            "mean": [0.0, 1.0, -1.0],
            "std": [1.0, 2.0, 0.5],
        },
    }
    example = torch.zeros((1, 3), dtype=torch.float32)
    return write_model_dir(tmp_path_factory.mktemp("models") / "mlp", spec, example)
