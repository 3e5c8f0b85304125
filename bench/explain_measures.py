"""The measures bench/explain.py reports, apart from the models and the replica it runs them
on (tests/explain/test_bench_explain.py checks them on a model whose attributions are known):
attributions per example's own target, deletion and insertion curves and their areas
(Petsiuk et al. 2018), a copy of a model with re-initialised layers and the rank
correlations of attributions (Adebayo et al. 2018)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from nimbus.explain.attributions import explain
from nimbus.explain.options import ExplainOptions

RANDOM_ORDERS = 5  # random attributions: the mean over this many random orders per example


def attributions(
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    targets: np.ndarray,
    options: ExplainOptions,
    prep: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None]:
    """``explain`` for each example's own target class (grouped: the options name one)."""
    out = np.zeros(x.shape, dtype=np.float32)
    delta = np.zeros(len(x), dtype=np.float32)
    has_delta = True
    for target in np.unique(targets):
        rows = np.flatnonzero(targets == target)
        found = explain(module, kind, x[rows], replace(options, target=int(target)), prep)
        out[rows] = found.attributions
        if found.delta is None:
            has_delta = False
        else:
            delta[rows] = found.delta
    return out, delta if has_delta else None


def probability_of(module: torch.nn.Module, batch: np.ndarray, target: int) -> np.ndarray:
    with torch.no_grad():
        logits = module(torch.from_numpy(np.ascontiguousarray(batch)))
        return torch.softmax(logits.float(), dim=-1)[:, target].numpy()


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at k/K, k = 0..K."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def example_curves(
    module: torch.nn.Module,
    x: np.ndarray,
    scores: np.ndarray,
    baseline: np.ndarray,
    target: int,
    positions: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Deletion and insertion AUC of one example: ``positions`` (flat indices into the
    example) taken in order of decreasing ``scores`` (ties broken at random)."""
    k = len(positions)
    order = positions[np.lexsort((rng.random(k), -scores.reshape(-1)[positions]))]
    rank = np.full(x.size, k, dtype=np.int64)
    rank[order] = np.arange(k)
    taken = rank[None, :] < np.arange(k + 1)[:, None]  # [k + 1, elements]: first j taken
    flat, base = x.reshape(1, -1), baseline.reshape(1, -1)
    deleted = np.where(taken, base, flat).reshape(k + 1, *x.shape)
    inserted = np.where(taken, flat, base).reshape(k + 1, *x.shape)
    return (
        auc(probability_of(module, deleted, target)),
        auc(probability_of(module, inserted, target)),
    )


def faithfulness(
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    targets: np.ndarray,
    scores: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example deletion and insertion AUC; ``scores`` None: random orders (the mean
    over :data:`RANDOM_ORDERS`)."""
    rng = np.random.default_rng(0)
    deletion, insertion = np.zeros(len(x)), np.zeros(len(x))
    for i, example in enumerate(x):
        baseline = np.zeros_like(example)  # black pixels; the padding id
        flat = example.reshape(-1)
        positions = np.flatnonzero(flat) if kind == "text" else np.arange(flat.size)
        draws = [scores[i]] if scores is not None else []
        draws += [rng.random(example.shape) for _ in range(RANDOM_ORDERS if not draws else 0)]
        found = [
            example_curves(module, example, s, baseline, int(targets[i]), positions, rng)
            for s in draws
        ]
        deletion[i] = np.mean([d for d, _ in found])
        insertion[i] = np.mean([n for _, n in found])
    return deletion, insertion


def randomised(module: torch.nn.Module, top: int | None, seed: int = 1) -> torch.nn.Module:
    """A copy with the weights of its last ``top`` layers (None: all) re-initialised."""
    copied = copy.deepcopy(module)
    layers = [m for m in copied.modules() if hasattr(m, "reset_parameters")]
    torch.manual_seed(seed)
    for layer in layers if top is None else layers[-top:]:
        layer.reset_parameters()
    return copied.eval()


def rank_correlations(
    a: np.ndarray, b: np.ndarray, masks: np.ndarray, signed: bool = False
) -> np.ndarray:
    """Spearman correlation of |a| and |b| (``signed``: of a and b) per example, over the
    elements ``masks`` keeps (NaN where either side is constant there)."""
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        keep = masks[i].reshape(-1)
        left, right = a[i].reshape(-1)[keep], b[i].reshape(-1)[keep]
        if not signed:
            left, right = np.abs(left), np.abs(right)
        if keep.sum() > 2 and left.std() > 0 and right.std() > 0:
            out[i] = spearmanr(left, right).statistic
    return out


def median_of(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if len(kept) else float("nan")
