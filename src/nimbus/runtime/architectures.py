"""The built-in models, each taking the raw input as the dataset holds it.

Preprocessing lives inside the module (uint8 NHWC images -> normalised float NCHW;
tabular standardisation) so the ONNX export carries it. Its constants are
non-persistent buffers: ``weights.safetensors`` holds only what training learnt and
``spec.json`` (``preprocessing``) is the one source of the constants, from which
:func:`build_model` rebuilds a module whose ``state_dict`` the weights fill.
Every model returns logits; softmax is added at export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from nimbus.errors import InvalidInput
from nimbus.modelformat.files import SPEC_FILE, WEIGHTS_FILE


class ImagePreprocess(nn.Module):
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]``, scaled then normalised."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float], scale: float = 1 / 255) -> None:
        super().__init__()
        self.scale = float(scale)
        channels = len(mean)
        self.register_buffer("mean", _vector(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", _vector(std).view(1, channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        return (x - self.mean) / self.std


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature; missing or infinite values become 0, the mean."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", _vector(mean).view(1, -1), persistent=False)
        self.register_buffer("std", _vector(std).view(1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(torch.float32) - self.mean) / self.std
        return torch.where(torch.isnan(z) | torch.isinf(z), torch.zeros_like(z), z)


class ImageCNN(nn.Module):
    """The seed classifier: Conv(C, k, 3) ReLU MaxPool(2) Flatten Linear ReLU Linear.

    Larger inputs get a size-aware front and back (see :func:`cnn_layout`): an average-pool
    ``stem_pool`` that brings the longer side to at most :data:`CNN_WORK_SIDE` pixels, and
    ``stages`` stride-2 ``Conv(k, k, 3) ReLU`` after the seed's pool until the feature map is
    at most :data:`CNN_FEATURE_SIDE` on a side, so the dense layer and the activations stay
    small whatever the image size. At the defaults (1, 0) it is exactly the seed's model.
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int,
        preprocess: ImagePreprocess,
        conv_channels: int = 32,
        hidden: int = 128,
        stem_pool: int = 1,
        stages: int = 0,
    ) -> None:
        super().__init__()
        if height < 4 or width < 4:
            raise InvalidInput(f"images must be at least 4x4 pixels, got {height}x{width}")
        if stem_pool < 1 or stages < 0 or min(height, width) // stem_pool < 4:
            raise InvalidInput(f"cnn stem_pool {stem_pool} / stages {stages} do not fit the input")
        self.preprocess = preprocess
        layers: list[nn.Module] = [nn.AvgPool2d(stem_pool)] if stem_pool > 1 else []
        layers += [nn.Conv2d(in_channels, conv_channels, 3), nn.ReLU(), nn.MaxPool2d(2)]
        side_h, side_w = (height // stem_pool - 2) // 2, (width // stem_pool - 2) // 2
        for _ in range(stages):
            layers += [nn.Conv2d(conv_channels, conv_channels, 3, stride=2, padding=1), nn.ReLU()]
            side_h, side_w = (side_h - 1) // 2 + 1, (side_w - 1) // 2 + 1
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(conv_channels * side_h * side_w, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(self.preprocess(x)))
        return logits


CNN_WORK_SIDE = 128
CNN_FEATURE_SIDE = 16


def cnn_layout(height: int, width: int) -> dict[str, int]:
    """The cnn's size-aware ``stem_pool`` and ``stages`` for ``height x width`` inputs.

    Up to 35 pixels a side this is the seed's model (1, 0). Beyond, the stem averages
    ``stem_pool x stem_pool`` blocks until the longer side is at most 128 (the first
    convolution's activations then take at most ~130 MB for a batch of 64), and each stage
    halves the feature map until its longer side is at most 16 (the dense layer then has at
    most ``conv_channels * 256`` inputs).
    """
    # The stem never leaves the shorter side under the seed's 4 pixels.
    stem_pool = max(1, min(-(-max(height, width) // CNN_WORK_SIDE), min(height, width) // 4))
    side = (max(height, width) // stem_pool - 2) // 2
    stages = 0
    while side > CNN_FEATURE_SIDE:
        side = (side - 1) // 2 + 1
        stages += 1
    return {"stem_pool": stem_pool, "stages": stages}


class TextClassifier(nn.Module):
    """Token ids ``[N, L]`` (0 = padding) -> mean of non-pad embeddings -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).to(torch.float32)
        summed = (self.embedding(ids) * mask).sum(dim=1)
        logits: torch.Tensor = self.classifier(summed / mask.sum(dim=1).clamp(min=1.0))
        return logits


class TabularMLP(nn.Module):
    """Standardise, then ``Linear ReLU Dropout`` per hidden width, then Linear."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        preprocess: Standardize,
        hidden: list[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        layers: list[nn.Module] = []
        width = in_features
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(self.preprocess(x))
        return logits


def _vector(values: list[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _build_cnn(arch: dict[str, Any], prep: dict[str, Any]) -> nn.Module:
    preprocess = ImagePreprocess(prep["mean"], prep["std"], prep.get("scale", 1 / 255))
    return ImageCNN(
        in_channels=int(arch["in_channels"]),
        height=int(arch["height"]),
        width=int(arch["width"]),
        num_classes=int(arch["num_classes"]),
        preprocess=preprocess,
        conv_channels=int(arch.get("conv_channels", 32)),
        hidden=int(arch.get("hidden", 128)),
        stem_pool=int(arch.get("stem_pool", 1)),
        stages=int(arch.get("stages", 0)),
    )


def _build_text(arch: dict[str, Any], prep: dict[str, Any]) -> nn.Module:
    vocab_size = int(arch["vocab_size"])
    if "vocab" in prep and len(prep["vocab"]) != vocab_size:
        raise InvalidInput("spec vocab_size does not match the vocabulary")
    return TextClassifier(vocab_size, int(arch["embed_dim"]), int(arch["num_classes"]))


def _build_mlp(arch: dict[str, Any], prep: dict[str, Any]) -> nn.Module:
    return TabularMLP(
        in_features=int(arch["in_features"]),
        num_classes=int(arch["num_classes"]),
        preprocess=Standardize(prep["mean"], prep["std"]),
        hidden=[int(w) for w in arch["hidden"]],
        dropout=float(arch.get("dropout", 0.0)),
    )


BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], nn.Module]] = {
    "cnn": _build_cnn,
    "text": _build_text,
    "mlp": _build_mlp,
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised built-in model from spec.json's ``architecture``,
    ``arch_params`` and ``preprocessing``; load ``weights.safetensors`` into it.
    """
    architecture = spec.get("architecture")
    builder = BUILDERS.get(str(architecture))
    if builder is None:
        raise InvalidInput(f"no built-in architecture {architecture!r}")
    try:
        return builder(dict(spec["arch_params"]), dict(spec.get("preprocessing") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"malformed {architecture} spec: {exc!r}") from exc


def load_torch_model(model_dir: Path) -> nn.Module:
    """A built-in model rebuilt from a model directory's spec.json and weights.safetensors,
    in eval mode. It returns logits (apply softmax for probabilities), exactly as trained;
    nothing is unpickled."""
    try:
        spec = json.loads((model_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {SPEC_FILE} in {model_dir}: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidInput(f"{SPEC_FILE} is not a JSON object")
    model = build_model(spec)
    try:
        model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InvalidInput(f"weights do not fit the spec in {model_dir}: {exc}") from exc
    return model.eval()
