"""Attributions with Captum, for the probability of a target class.

Inputs come as the model's client sends them (``spec.input``): images uint8 ``[N, H, W, C]``,
tabular float32 ``[N, F]``; text as the token ids its encoder made, int64 ``[N, L]``. A
built-in module maps those raw inputs to logits (the preprocessing is inside it), so an
image's or a row's attributions are per raw pixel or feature, in the input's shape; a text's
are per token slot (the embedding's attribution summed over its dimensions).

Integrated Gradients comes with its completeness error per example: the attributions' sum
minus the target probability's change from the baseline to the input (0 for the exact
integral; it shrinks with ``steps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from nimbus.errors import InvalidInput
from nimbus.explain.options import (
    GRADIENT_FREE,
    INTEGRATED_GRADIENTS,
    NEEDS_GRADIENTS,
    OCCLUSION,
    SHAPLEY,
    SMOOTHGRAD,
    ExplainOptions,
)

# Interpolated inputs Integrated Gradients runs through the model at once, by elements
# (pixels, features, token slots): bounds its memory whatever ``steps`` is.
IG_ELEMENTS_PER_BATCH = 1 << 20

# SmoothGrad's noise: a normal deviation of this share of the pixels' range (0..255), in the
# 10-20% Smilkov et al. (2017) found to sharpen the maps.
SMOOTHGRAD_NOISE = 0.15


@cache
def _blas_threads() -> Any:
    """The process's thread pools (threadpoolctl). Attributions are computed with numpy's
    BLAS on one thread: Captum solves an eigenvalue problem (numpy's ``leggauss``, twice a
    call) for Integrated Gradients' Gauss-Legendre points, and on a busy host the BLAS's
    threads made that 30 times slower (1 s instead of 30 ms at 256 steps on two shared
    cores; bench/explain.py)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@dataclass(frozen=True)
class Explanation:
    attributions: np.ndarray  # float32, the input's shape (text: [N, L], per token slot)
    targets: np.ndarray  # int64 [N]: the class each example's attributions explain
    probabilities: np.ndarray  # float32 [N, classes]: the prediction explained
    delta: np.ndarray | None  # float32 [N]: Integrated Gradients' completeness error


Forward = Callable[[np.ndarray], np.ndarray]  # a batch of model inputs -> probabilities


def explain(
    model: torch.nn.Module | Forward,
    kind: str,
    inputs: np.ndarray,
    options: ExplainOptions,
    preprocessing: dict[str, Any] | None = None,
) -> Explanation:
    """Attributions for ``inputs`` (a batch) to the model's target-class probability.

    ``model``: a PyTorch module (logits out: every method), or a forward function from
    model inputs to probabilities (a model served from its ONNX graph alone: the methods
    that need no gradients, occlusion and Shapley sampling; their perturbed inputs are
    rounded back to the inputs' integer type where they have one). ``preprocessing``: the
    spec's block (the tabular ``mean`` baseline, the image ``mean`` baseline)."""
    gradients = isinstance(model, torch.nn.Module)
    method = options.method_for(kind, gradients)
    if not gradients and method in NEEDS_GRADIENTS:
        raise InvalidInput(
            f"{method} needs the model's PyTorch weights; this model has only its "
            f"ONNX graph: use {GRADIENT_FREE[kind]}",
            field="method",
        )
    probability = _probability(model, inputs.dtype)

    with torch.no_grad():
        raw = torch.from_numpy(np.require(inputs, requirements=["C", "W"]))
        probabilities = probability(raw)
    classes = probabilities.shape[-1]
    if options.target is not None and options.target >= classes:
        raise InvalidInput(f"target must be a class index below {classes}", field="target")
    targets = (
        torch.full((len(raw),), options.target, dtype=torch.int64)
        if options.target is not None
        else probabilities.argmax(dim=-1)
    )
    delta: torch.Tensor | None
    with _blas_threads().limit(limits=1, user_api="blas"):
        if kind == "text" and method == OCCLUSION:
            attributions = _token_occlusion(probability, raw, targets)
            delta = None
        elif kind == "text":
            assert isinstance(model, torch.nn.Module)
            attributions, delta = _text(model, probability, raw, targets, options)
        else:
            x = raw.to(torch.float32)
            baseline = _baseline(kind, x, options, preprocessing or {})
            if method == INTEGRATED_GRADIENTS:
                attributions, delta = _integrated(probability, x, baseline, targets, options.steps)
            elif method == OCCLUSION:
                attributions = _occlusion(probability, x, baseline, targets, options)
                delta = None
            elif method == SMOOTHGRAD:
                attributions = _smoothgrad(probability, x, targets, options.samples)
                delta = None
            elif method == SHAPLEY:
                attributions = _shapley(probability, x, baseline, targets, options)
                delta = None
            else:
                raise InvalidInput(f"unknown method {method!r}", field="method")
    return Explanation(
        attributions=attributions.detach().to(torch.float32).numpy(),
        targets=targets.numpy().astype(np.int64),
        probabilities=probabilities.numpy().astype(np.float32),
        delta=None if delta is None else delta.detach().to(torch.float32).numpy(),
    )


def _probability(
    model: torch.nn.Module | Forward, dtype: np.dtype[Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(model, torch.nn.Module):
        module = model.eval()

        def through_module(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(module(x).float(), dim=-1)

        return through_module
    forward = model
    integral = np.issubdtype(dtype, np.integer)

    def through_forward(x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().cpu().numpy()
        if integral:
            info = np.iinfo(dtype)
            batch = np.clip(np.rint(batch), info.min, info.max)
        out = forward(np.ascontiguousarray(batch.astype(dtype, copy=False)))
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    return through_forward


def _token_occlusion(
    probability: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Each token slot's attribution: the target probability's drop when that token alone
    becomes padding (padding slots stay 0)."""
    from captum.attr import Occlusion

    x = ids.to(torch.float32)
    result: torch.Tensor = Occlusion(probability).attribute(
        x,
        sliding_window_shapes=(1,),
        strides=(1,),
        baselines=0.0,
        target=targets,
        perturbations_per_eval=16,
    )
    return torch.where(ids == 0, torch.zeros_like(result), result)


def _baseline(
    kind: str, x: torch.Tensor, options: ExplainOptions, prep: dict[str, Any]
) -> torch.Tensor:
    """The reference input the attributions are measured from, the input's shape."""
    named = options.baseline
    if kind == "image":
        if isinstance(named, float):
            return torch.full_like(x, named)
        if named == "white":
            return torch.full_like(x, 255.0)
        if named == "mean":  # the training set's mean pixel, per channel, in raw units
            scale = float(prep.get("scale", 1 / 255))
            mean = torch.tensor([float(m) / scale for m in prep.get("mean", [])])
            if mean.numel() != x.shape[-1]:
                raise InvalidInput("this model's spec has no per-channel mean", field="baseline")
            return mean.view(1, 1, 1, -1).expand_as(x).clone()
        return torch.zeros_like(x)  # black
    if named == "zeros":
        return torch.zeros_like(x)
    means = prep.get("mean")  # tabular "mean": the training set's feature means, raw units
    if not isinstance(means, list) or len(means) != x.shape[-1]:
        raise InvalidInput("this model's spec has no feature means", field="baseline")
    return torch.tensor([float(m) for m in means]).view(1, -1).expand_as(x).clone()


def _per_batch(x: torch.Tensor) -> int:
    per_example = max(1, int(np.prod(x.shape[1:])))
    return max(1, IG_ELEMENTS_PER_BATCH // per_example)


def _integrated(
    probability: Any, x: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from captum.attr import IntegratedGradients

    method = IntegratedGradients(probability)
    attributions, delta = method.attribute(
        x,
        baselines=baseline,
        target=targets,
        n_steps=steps,
        internal_batch_size=_per_batch(x),
        return_convergence_delta=True,
    )
    return attributions, delta


def _occlusion(
    probability: Any,
    x: torch.Tensor,
    baseline: torch.Tensor,
    targets: torch.Tensor,
    options: ExplainOptions,
) -> torch.Tensor:
    """Each pixel's attribution: the target probability's average drop when a square patch
    over it is replaced by the baseline."""
    from captum.attr import Occlusion

    channels = x.shape[-1]
    side = min(options.window, x.shape[1], x.shape[2])
    stride = min(options.stride or side, side)
    result: torch.Tensor = Occlusion(probability).attribute(
        x,
        sliding_window_shapes=(side, side, channels),
        strides=(stride, stride, channels),
        baselines=baseline,
        target=targets,
        perturbations_per_eval=16,
    )
    return result


def _shapley(
    probability: Any,
    x: torch.Tensor,
    baseline: torch.Tensor,
    targets: torch.Tensor,
    options: ExplainOptions,
) -> torch.Tensor:
    """Shapley values per feature, estimated over ``samples`` random feature orders (seeded:
    the same request gives the same values)."""
    from captum.attr import ShapleyValueSampling

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        result: torch.Tensor = ShapleyValueSampling(probability).attribute(
            x, baselines=baseline, target=targets, n_samples=options.samples
        )
    finally:
        torch.random.set_rng_state(state)
    return result


def _smoothgrad(
    probability: Any, x: torch.Tensor, targets: torch.Tensor, samples: int
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the target probability's gradient per raw pixel,
    signed, averaged over ``samples`` copies of the input with normal noise added (seeded:
    the same request gives the same values). A sensitivity, not a share of the probability:
    it does not add up to anything. Unlike Integrated Gradients from black it is not the
    pixel's value times a gradient, so it passes the model-randomisation check on digits
    (bench/explain.py)."""
    from captum.attr import NoiseTunnel, Saliency

    per_copy = max(1, int(np.prod(x.shape)))
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        result: torch.Tensor = NoiseTunnel(Saliency(probability)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=samples,
            nt_samples_batch_size=max(1, IG_ELEMENTS_PER_BATCH // per_copy),
            stdevs=SMOOTHGRAD_NOISE * 255.0,
            target=targets,
            abs=False,
        )
    finally:
        torch.random.set_rng_state(state)
    return result


def _text(
    module: torch.nn.Module,
    probability: Any,
    ids: torch.Tensor,
    targets: torch.Tensor,
    options: ExplainOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients on the token embeddings, from all-padding (whose embedding is
    zero), summed over the embedding's dimensions: one attribution per token slot.
    ``module.embedding``: a built-in's ``nn.Embedding``, or a script program's embedding
    node (:class:`~nimbus.modelformat.program.EmbeddingNode`)."""
    from captum.attr import LayerIntegratedGradients

    embedding = getattr(module, "embedding", None)
    if not isinstance(embedding, torch.nn.Module):
        raise InvalidInput("this text model has no token embedding to explain")
    method = LayerIntegratedGradients(probability, embedding)
    attributions, delta = method.attribute(
        ids.to(torch.int64),
        baselines=torch.zeros_like(ids, dtype=torch.int64),
        target=targets,
        n_steps=options.steps,
        internal_batch_size=_per_batch(ids),
        return_convergence_delta=True,
    )
    return attributions.sum(dim=-1), delta
