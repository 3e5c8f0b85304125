from __future__ import annotations

import numpy as np
import pytest
import torch

from nimbus.errors import InvalidInput
from nimbus.runtime.architectures import (
    ImageCNN,
    ImagePreprocess,
    Standardize,
    TabularMLP,
    TextClassifier,
    build_model,
)


def test_image_preprocess_scales_normalises_and_reorders() -> None:
    pre = ImagePreprocess(mean=[0.5, 0.0], std=[0.5, 1.0], scale=1 / 255)
    x = torch.zeros(1, 2, 3, 2, dtype=torch.uint8)
    x[0, 1, 2, 0] = 255
    out = pre(x)
    assert out.shape == (1, 2, 2, 3) and out.dtype == torch.float32
    assert out[0, 0, 1, 2].item() == pytest.approx(1.0)
    assert out[0, 0, 0, 0].item() == pytest.approx(-1.0)
    assert out[0, 1].abs().max().item() == 0


def test_standardize_zeroes_missing_and_infinite_values() -> None:
    std = Standardize(mean=[1.0, 10.0], std=[2.0, 5.0])
    x = torch.tensor([[3.0, float("nan")], [float("inf"), 0.0]])
    assert std(x).tolist() == [[1.0, 0.0], [0.0, -2.0]]


@pytest.mark.parametrize(("height", "width", "channels"), [(8, 8, 1), (28, 28, 1), (9, 13, 3)])
def test_cnn_adapts_to_the_input_shape(height: int, width: int, channels: int) -> None:
    model = ImageCNN(
        channels, height, width, 5, ImagePreprocess([0.0] * channels, [1.0] * channels)
    )
    x = torch.randint(0, 255, (2, height, width, channels), dtype=torch.uint8)
    assert model(x).shape == (2, 5)


def test_cnn_refuses_tiny_images() -> None:
    with pytest.raises(InvalidInput, match="at least 4x4"):
        ImageCNN(1, 3, 8, 2, ImagePreprocess([0.0], [1.0]))


def test_text_model_ignores_padding() -> None:
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=10, embed_dim=4, num_classes=3)
    short = torch.tensor([[3, 4, 0, 0, 0]])
    longer = torch.tensor([[3, 4, 0, 0, 0, 0, 0, 0]])
    assert torch.allclose(model(short), model(longer))
    assert torch.isfinite(model(torch.zeros(1, 5, dtype=torch.long))).all()


def test_weights_hold_no_preprocessing_constants() -> None:
    model = TabularMLP(2, 3, Standardize([0.0, 0.0], [1.0, 1.0]), hidden=[4], dropout=0.5)
    assert not any("preprocess" in key for key in model.state_dict())


SPECS = {
    "cnn": {
        "architecture": "cnn",
        "arch_params": {
            "in_channels": 1,
            "height": 8,
            "width": 8,
            "num_classes": 3,
            "conv_channels": 4,
            "hidden": 8,
        },
        "preprocessing": {"kind": "image", "scale": 1 / 255, "mean": [0.2], "std": [0.3]},
    },
    "text": {
        "architecture": "text",
        "arch_params": {"vocab_size": 6, "embed_dim": 4, "num_classes": 2},
        "preprocessing": {"kind": "text", "max_len": 5, "vocab": ["<pad>", "<unk>", *"abcd"]},
    },
    "mlp": {
        "architecture": "mlp",
        "arch_params": {"in_features": 3, "hidden": [5, 4], "dropout": 0.0, "num_classes": 2},
        "preprocessing": {
            "kind": "tabular",
            "features": ["a", "b", "c"],
            "mean": [1.0, 2.0, 3.0],
            "std": [1.0, 1.0, 2.0],
        },
    },
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_build_model_from_spec_accepts_its_own_weights(name: str) -> None:
    first, second = build_model(SPECS[name]), build_model(SPECS[name])
    second.load_state_dict(first.state_dict(), strict=True)
    x = {
        "cnn": torch.randint(0, 255, (2, 8, 8, 1), dtype=torch.uint8),
        "text": torch.tensor([[2, 3, 0, 0, 0], [5, 1, 4, 0, 0]]),
        "mlp": torch.from_numpy(np.array([[1.0, np.nan, 0.5], [0.0, 2.0, 3.0]], np.float32)),
    }[name]
    assert torch.equal(first.eval()(x), second.eval()(x))


@pytest.mark.parametrize(
    "spec",
    [
        {"architecture": "custom", "arch_params": {}},
        {"architecture": "cnn"},
        {"architecture": "cnn", "arch_params": {"in_channels": 1}, "preprocessing": {}},
        {**SPECS["text"], "arch_params": {"vocab_size": 9, "embed_dim": 4, "num_classes": 2}},
    ],
)
def test_build_model_refuses_bad_specs(spec: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        build_model(spec)
