"""Per built-in model: derive preprocessing from the train split, and write the spec.

Each preparer turns :class:`DataSplits` plus validated params into a :class:`Prepared`:
the model's input arrays per split (raw for images and tabular data, token ids for
text), ``arch_params`` and ``preprocessing`` (statistics or vocabulary from the train
split only) and the input signatures that make up ``spec.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nimbus.datasets.domain import SPLITS, Task
from nimbus.modelformat.text import build_encoder
from nimbus.runtime.architectures import cnn_layout
from nimbus.runtime.data import DataSplits, channel_stats, feature_stats, gather
from nimbus.runtime.hyperparams import TOKEN_PATTERNS

FORMAT_VERSION = 1
IMAGE_SCALE = 1 / 255


@dataclass(frozen=True)
class Prepared:
    """What training a built-in model needs besides the model itself."""

    arrays: dict[str, np.ndarray]  # model input per split
    arch_params: dict[str, Any]
    preprocessing: dict[str, Any]
    input: dict[str, Any]  # what a client sends
    onnx_input: dict[str, Any]  # what the model (and model.onnx) takes
    dtype: np.dtype[Any]

    def batch(self, split: str, idx: np.ndarray) -> torch.Tensor:
        """The model input for rows ``idx`` of ``split``, converted per batch."""
        rows = gather(self.arrays[split], idx)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=self.dtype))

    def spec(self, architecture: str, task: Task, classes: list[str]) -> dict[str, Any]:
        """spec.json of docs/model-format.md."""
        return {
            "format_version": FORMAT_VERSION,
            "task": str(task),
            "architecture": architecture,
            "arch_params": self.arch_params,
            "classes": [str(c) for c in classes],
            "input": self.input,
            "onnx_input": self.onnx_input,
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "preprocessing": self.preprocessing,
        }


def _signature(datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": "input", "datatype": datatype, "shape": [-1, *shape]}


def prepare_image(data: DataSplits, params: dict[str, Any]) -> Prepared:
    """uint8 NHWC images; per-channel mean/std of the scaled train pixels."""
    _, height, width, channels = data.train.x.shape
    mean, std = channel_stats(data.train.x, IMAGE_SCALE)
    signature = _signature("UINT8", [height, width, channels])
    return Prepared(
        arrays={name: getattr(data, name).x for name in SPLITS},
        arch_params={
            "in_channels": channels,
            "height": height,
            "width": width,
            "num_classes": len(data.classes),
            "conv_channels": params["conv_channels"],
            "hidden": params["hidden"],
            **cnn_layout(height, width),
        },
        preprocessing={
            "kind": "image",
            "scale": IMAGE_SCALE,
            "mean": mean,
            "std": std,
            "height": height,
            "width": width,
            "channels": channels,
            **_transform(data),
        },
        input=signature,
        onnx_input=signature,
        dtype=np.dtype(np.uint8),
    )


def _transform(data: DataSplits) -> dict[str, Any]:
    """The spec's record of how ingest fitted the images, so serving fits them alike."""
    return {} if data.image_transform is None else {"transform": dict(data.image_transform)}


def prepare_text(data: DataSplits, params: dict[str, Any]) -> Prepared:
    """Strings, tokenised with a vocabulary built from the train split."""
    encoder = build_encoder(
        data.train.x,
        max_len=params["max_len"],
        min_freq=params["min_freq"],
        max_vocab=params["max_vocab"],
        token_pattern=TOKEN_PATTERNS[params["tokenizer"]],
        ngrams=params["ngrams"],
    )
    return Prepared(
        arrays={name: encoder.encode(getattr(data, name).x) for name in SPLITS},
        arch_params={
            "vocab_size": encoder.vocab_size,
            "embed_dim": params["embed_dim"],
            "num_classes": len(data.classes),
        },
        preprocessing=encoder.preprocessing(),
        input={"name": "input", "datatype": "BYTES", "shape": [-1]},
        onnx_input=_signature("INT64", [encoder.max_len]),
        dtype=np.dtype(np.int64),
    )


def prepare_tabular(data: DataSplits, params: dict[str, Any]) -> Prepared:
    """float32 feature rows; per-feature mean/std of the train split."""
    n_features = data.train.x.shape[1]
    features = data.features or [f"f{i}" for i in range(n_features)]
    mean, std = feature_stats(data.train.x)
    signature = _signature("FP32", [n_features])
    return Prepared(
        arrays={name: getattr(data, name).x for name in SPLITS},
        arch_params={
            "in_features": n_features,
            "hidden": list(params["hidden"]),
            "dropout": params["dropout"],
            "num_classes": len(data.classes),
        },
        preprocessing={"kind": "tabular", "features": list(features), "mean": mean, "std": std},
        input=signature,
        onnx_input=signature,
        dtype=np.dtype(np.float32),
    )


PREPARERS: dict[str, Callable[[DataSplits, dict[str, Any]], Prepared]] = {
    "cnn": prepare_image,
    "text": prepare_text,
    "mlp": prepare_tabular,
}
