"""Train / val / test splits: pure functions of the labels, the fractions and a seed.

Seeded splits are stratified. Each class's examples are dealt to the splits in counts that
are within one of that class's exact share (``count * fraction``), and the rounding is
steered so that the split totals stay within a few examples of their exact shares too, even
with many tiny classes. Indices within a split are sorted, so a split reads a memory-mapped
source sequentially.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus.datasets.domain import SPLITS, SplitInfo
from nimbus.errors import InvalidInput


@dataclass(frozen=True)
class SplitPlan:
    """Sorted int64 example indices per split, and where the test split came from."""

    indices: dict[str, np.ndarray]
    source: str  # "given" (the data's own test split) or "seeded"


def validate_fractions(val_fraction: float, test_fraction: float) -> None:
    """Fractions must be finite, non-negative and leave some data for training."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{name} must be a number >= 0, not {value!r}")
    if val_fraction + test_fraction >= 1:
        raise InvalidInput(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction + test_fraction})"
        )


def allocate(counts: Sequence[int] | np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """How many examples of each class go to each split: an int64 ``[classes, splits]`` table.

    Every cell is the floor or the ceiling of ``count * fraction`` and every row sums to its
    count. The examples left over after flooring go, class after class, to the splits that
    are furthest below their running exact total (ties to the earlier split).
    """
    shares = np.asarray(fractions, dtype=np.float64)
    table = np.zeros((len(counts), len(shares)), dtype=np.int64)
    behind = np.zeros(len(shares))
    counts = np.asarray(counts, dtype=np.int64)
    # A class without examples changes nothing (its cells and its share of the leftovers are
    # 0): only the others are walked, so a label space of 70,000 costs what its used classes do.
    for row in np.flatnonzero(counts):
        count = counts[row]
        exact = count * shares
        cell = np.floor(exact + 1e-9).astype(np.int64)
        cell = np.minimum(cell, np.ceil(exact).astype(np.int64))
        behind += exact - cell
        extra = int(count - cell.sum())
        if extra > 0:
            # The leftovers go to distinct splits, so no cell passes its ceiling.
            chosen = np.argsort(-behind, kind="stable")[:extra]
            cell[chosen] += 1
            behind[chosen] -= 1
        elif extra < 0:  # only when the fractions sum past 1 by rounding error
            chosen = np.argsort(behind, kind="stable")[:-extra]
            cell[chosen] -= 1
            behind[chosen] += 1
        table[row] = cell
    return table


def stratified(
    y: np.ndarray, num_classes: int, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split example positions ``0..len(y)-1`` by class; one sorted index array per fraction."""
    y = _class_indices(y)
    counts = np.bincount(y, minlength=num_classes)
    table = allocate(counts, fractions)
    rng = np.random.default_rng(seed)
    # Positions and labels are narrowed as soon as they are made: the same values, a
    # fraction of the memory (millions of examples make these tens of MB in int64).
    shuffled = np.arange(len(y), dtype=_narrowest(len(y)))
    rng.shuffle(shuffled)  # the very permutation rng.permutation(len(y)) gives
    # Grouped by class, shuffled within. A stable sort gives the same order whatever the
    # keys' width, and numpy sorts small integers by radix.
    keys = y.astype(_narrowest(len(counts)))[shuffled]
    order = shuffled[np.argsort(keys, kind="stable")]
    del shuffled, keys
    # In that order, each class's examples go to the splits in turn, table[class] of each.
    splits = np.arange(len(fractions), dtype=np.int8)
    which = np.repeat(np.tile(splits, len(counts)), table.reshape(-1))
    return [np.sort(order[which == k]).astype(np.int64) for k in range(len(fractions))]


def _class_indices(y: np.ndarray) -> np.ndarray:
    """``y`` as an integer array, as narrow as it came (no int64 copy of a big uint8 one)."""
    y = np.asarray(y)
    return y if y.dtype.kind in "iu" else y.astype(np.int64)


def _narrowest(size: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds ``0 .. size - 1``."""
    return np.min_scalar_type(max(size - 1, 0))


def plan_splits(
    y: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    given_test: np.ndarray | None = None,
) -> SplitPlan:
    """Decide the train / val / test indices for class indices ``y`` (of any integer type).

    With ``given_test`` (a boolean mask of the data's own test examples) those are the test
    split and val is ``val_fraction`` of the remaining examples; otherwise a seeded
    stratified split with the given fractions. Deterministic for a given seed.
    """
    validate_fractions(val_fraction, test_fraction)
    y = _class_indices(y)
    if given_test is not None and given_test.any():
        mask = np.asarray(given_test, dtype=bool)
        pool = np.flatnonzero(~mask)
        train, val = stratified(y[pool], num_classes, [1 - val_fraction, val_fraction], seed)
        indices = {"train": pool[train], "val": pool[val], "test": np.flatnonzero(mask)}
        return SplitPlan({k: v.astype(np.int64, copy=False) for k, v in indices.items()}, "given")
    shares = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
    parts = stratified(y, num_classes, shares, seed)
    return SplitPlan(
        {name: part.astype(np.int64, copy=False) for name, part in zip(SPLITS, parts, strict=True)},
        "seeded",
    )


def split_info(y: np.ndarray, plan: SplitPlan, classes: list[str]) -> dict[str, SplitInfo]:
    """Per-split size and per-class counts (every class listed, zeros included)."""
    info = {}
    for name in SPLITS:
        idx = plan.indices[name]
        counts = np.bincount(np.asarray(y)[idx], minlength=len(classes))
        per_class = {cls: int(n) for cls, n in zip(classes, counts, strict=True)}
        info[name] = SplitInfo(size=len(idx), per_class=per_class)
    return info
