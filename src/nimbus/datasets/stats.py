"""Summary statistics of prepared data, computed from the split files in bounded chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nimbus.datasets.model import SPLITS, Task
from nimbus.datasets.rows import FileRows, RowSource, windows

# Stats make temporaries several times a chunk's size (uint16 squares, float64 features),
# so their chunks are smaller than the copy chunks.
STATS_CHUNK_BYTES = 8 * 1024 * 1024


def compute_stats(task: Task, files: dict[str, Path], schema: dict[str, Any]) -> dict[str, Any]:
    """Stats for a version: pixel mean/std, text lengths or per-feature mean/std and NaNs.

    Means and deviations are over the train split (what a model normalizes with); missing
    values are counted over every split.
    """
    train = FileRows.from_npy(files["train_x.npy"])
    if task is Task.IMAGE:
        return image_stats(train)
    if task is Task.TEXT:
        return text_stats(train)
    splits = [FileRows.from_npy(files[f"{s}_x.npy"]) for s in SPLITS]
    names = schema.get("features") or [f"f{i}" for i in range(train.shape[1])]
    return tabular_stats(train, splits, names)


def _chunks(x: RowSource) -> Iterator[np.ndarray]:
    for _, rows in windows(x, STATS_CHUNK_BYTES):
        yield rows


def image_stats(x: RowSource) -> dict[str, Any]:
    """Per-channel pixel mean and std (0-255 scale) of uint8 ``[N, H, W, C]`` images."""
    channels = x.shape[-1]
    total = np.zeros(channels, dtype=np.uint64)
    squares = np.zeros(channels, dtype=np.uint64)
    for chunk in _chunks(x):
        pixels = chunk.reshape(-1, channels)
        total += pixels.sum(axis=0, dtype=np.uint64)
        wide = pixels.astype(np.uint16)  # 255**2 fits; exact integer sums, no float drift
        np.multiply(wide, wide, out=wide)
        squares += wide.sum(axis=0, dtype=np.uint64)
    count = max(1, len(x) * int(np.prod(x.shape[1:-1], dtype=np.int64)))
    mean = total.astype(np.float64) / count
    var = np.maximum(squares.astype(np.float64) / count - mean**2, 0.0)
    return {
        "pixel_mean": [round(float(m), 4) for m in mean],
        "pixel_std": [round(float(s), 4) for s in np.sqrt(var)],
    }


def text_stats(x: RowSource) -> dict[str, Any]:
    """Text length (characters) minimum, maximum and mean over a ``<U`` array."""
    lo, hi, total = None, 0, 0
    for chunk in _chunks(x):
        lengths = np.char.str_len(chunk)
        if lengths.size:
            lo = int(lengths.min()) if lo is None else min(lo, int(lengths.min()))
            hi = max(hi, int(lengths.max()))
            total += int(lengths.sum())
    mean = total / len(x) if len(x) else 0.0
    return {"length_min": lo or 0, "length_max": hi, "length_mean": round(mean, 2)}


def tabular_stats(
    train: RowSource, splits: Sequence[RowSource], names: list[str]
) -> dict[str, Any]:
    """Per-feature mean/std over train (NaNs ignored) and missing values over all splits."""
    features = train.shape[1]
    count = np.zeros(features)
    total = np.zeros(features)
    squares = np.zeros(features)
    for chunk in _chunks(train):
        values = chunk.astype(np.float64)
        present = ~np.isnan(values)
        values[~present] = 0.0
        count += present.sum(axis=0)
        total += values.sum(axis=0)
        squares += (values**2).sum(axis=0)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0))
    missing = np.zeros(features, dtype=np.int64)
    for split in splits:
        for chunk in _chunks(split):
            missing += np.isnan(chunk).sum(axis=0)
    return {
        "feature_mean": {n: _finite(v) for n, v in zip(names, mean, strict=True)},
        "feature_std": {n: _finite(v) for n, v in zip(names, std, strict=True)},
        "missing": {n: int(v) for n, v in zip(names, missing, strict=True)},
        "missing_total": int(missing.sum()),
    }


def _finite(value: float) -> float | None:
    """A JSON-safe figure: infinities (from infinite inputs) become None."""
    return round(float(value), 6) if np.isfinite(value) else None
