"""Summary statistics, fed window by window, agree with numpy over the whole arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nimbus.datasets.domain import SPLITS, Task
from nimbus.datasets.stats import StatsAccumulator


def fed(task: Task, splits: dict[str, np.ndarray], schema: dict[str, object]) -> dict[str, Any]:
    """The accumulator's result after feeding every split in uneven pieces."""
    row_shape = tuple(splits["train"].shape[1:])
    summary = StatsAccumulator(task, schema, row_shape)
    rng = np.random.default_rng(0)
    for split in reversed(SPLITS):
        rows = splits[split]
        cuts = np.sort(rng.integers(0, len(rows) + 1, 4))
        for piece in np.split(rows, cuts):
            summary.add(split, piece)
    return summary.result()


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_mean_and_std_over_train(channels: int) -> None:
    rng = np.random.default_rng(channels)
    splits = {
        s: rng.integers(0, 256, (n, 5, 4, channels), dtype=np.uint8)
        for s, n in zip(SPLITS, (40, 7, 0), strict=True)
    }
    pixels = splits["train"].reshape(-1, channels).astype(np.float64)
    stats = fed(Task.IMAGE, splits, {})
    assert stats["pixel_mean"] == [round(float(m), 4) for m in pixels.mean(axis=0)]
    assert stats["pixel_std"] == [round(float(s), 4) for s in pixels.std(axis=0)]


def test_text_lengths_over_train() -> None:
    train = np.array(["a", "four", "", "seven!!"])
    splits = {"train": train, "val": np.array(["a much longer text"]), "test": train[:0]}
    stats = fed(Task.TEXT, splits, {})
    assert stats == {"length_min": 0, "length_max": 7, "length_mean": 3.0}


def test_features_over_train_and_missing_values_over_every_split() -> None:
    rng = np.random.default_rng(5)
    splits = {
        s: rng.normal(size=(n, 3)).astype(np.float32)
        for s, n in zip(SPLITS, (50, 10, 10), strict=True)
    }
    splits["train"][[1, 4], 0] = np.nan
    splits["test"][2, 2] = np.nan
    stats = fed(Task.TABULAR, splits, {"features": ["a", "b", "c"]})
    train = splits["train"].astype(np.float64)
    assert stats["missing"] == {"a": 2, "b": 0, "c": 1} and stats["missing_total"] == 3
    for j, name in enumerate("abc"):
        column = train[:, j][~np.isnan(train[:, j])]
        assert stats["feature_mean"][name] == pytest.approx(column.mean(), abs=1e-6)
        assert stats["feature_std"][name] == pytest.approx(column.std(), abs=1e-6)
