"""The built-in cnn at any image size: the seed's model where it fits, bounded beyond."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nimbus.modelformat.export import export_model
from nimbus.runtime.architectures import (
    CNN_FEATURE_SIDE,
    ImageCNN,
    ImagePreprocess,
    build_model,
    cnn_layout,
)


def cnn(height: int, width: int, channels: int = 3, **layout: int) -> ImageCNN:
    layout = layout or cnn_layout(height, width)
    preprocess = ImagePreprocess([0.5] * channels, [0.25] * channels)
    return ImageCNN(channels, height, width, 4, preprocess, **layout)


def spec(height: int, width: int, **arch: Any) -> dict[str, Any]:
    signature = {"name": "input", "datatype": "UINT8", "shape": [-1, height, width, 3]}
    return {
        "format_version": 1,
        "task": "image-classification",
        "architecture": "cnn",
        "arch_params": {
            "in_channels": 3,
            "height": height,
            "width": width,
            "num_classes": 4,
            **arch,
        },
        "classes": ["a", "b", "c", "d"],
        "input": signature,
        "onnx_input": signature,
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "preprocessing": {"kind": "image", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3},
    }


@pytest.mark.parametrize("size", [(4, 4), (28, 28), (32, 32), (35, 20)])
def test_small_images_get_the_seeds_model(size: tuple[int, int]) -> None:
    assert cnn_layout(*size) == {"stem_pool": 1, "stages": 0}
    shapes = {k: tuple(v.shape) for k, v in cnn(*size, channels=1).state_dict().items()}
    h, w = (size[0] - 2) // 2, (size[1] - 2) // 2
    assert shapes == {
        "features.0.weight": (32, 1, 3, 3),
        "features.0.bias": (32,),
        "classifier.0.weight": (128, 32 * h * w),
        "classifier.0.bias": (128,),
        "classifier.2.weight": (4, 128),
        "classifier.2.bias": (4,),
    }


def test_a_spec_written_before_the_layout_existed_builds_the_seeds_model() -> None:
    model = build_model(spec(40, 40))  # no stem_pool, no stages: as older specs are
    assert model.state_dict()["classifier.0.weight"].shape == (128, 32 * 19 * 19)


@pytest.mark.parametrize(
    ("size", "batch"), [((64, 64), 64), ((96, 128), 64), ((480, 640), 32), ((1024, 1024), 8)]
)
def test_large_images_train_with_bounded_features(size: tuple[int, int], batch: int) -> None:
    model = cnn(*size)
    dense = model.classifier[0]
    assert isinstance(dense, torch.nn.Linear)
    assert dense.in_features <= 32 * CNN_FEATURE_SIDE**2
    assert sum(p.numel() for p in model.parameters()) < 1_200_000
    x = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)
    loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss)


def test_the_layout_keeps_a_thin_image_at_least_four_pixels_across() -> None:
    layout = cnn_layout(1024, 8)
    assert layout["stem_pool"] == 2
    assert cnn(1024, 8, **layout)(torch.zeros((1, 1024, 8, 3), dtype=torch.uint8)).shape == (1, 4)


def test_a_large_cnn_exports_to_onnx_and_agrees(tmp_path: Path) -> None:
    model_spec = spec(150, 200, **cnn_layout(150, 200))
    assert model_spec["arch_params"]["stem_pool"] == 2
    model = build_model(model_spec)
    example = np.random.default_rng(0).integers(0, 256, (2, 150, 200, 3), dtype=np.uint8)
    export_model(model, model_spec, example, tmp_path / "model")  # checks ORT == torch
    assert (tmp_path / "model" / "model.onnx").stat().st_size > 0
