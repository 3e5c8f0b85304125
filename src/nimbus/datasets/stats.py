"""Summary statistics of prepared data, accumulated window by window while the split files
are written (no second pass over them, no more memory than a window's temporaries)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nimbus.datasets.domain import Task

SQUARES_BYTES = 512 * 1024


class StatsAccumulator:
    """Stats for a version: pixel mean/std, text lengths or per-feature mean/std and NaNs.

    Feed it every example once with :meth:`add` (by split, in any order, any number of
    rows at a time), then read :meth:`result`. Means and deviations are over the train
    split (what a model normalizes with); missing values are counted over every split.
    """

    def __init__(self, task: Task, schema: dict[str, Any], row_shape: tuple[int, ...]) -> None:
        self.task = task
        self.train_rows = 0
        if task is Task.IMAGE:
            channels = row_shape[-1]
            self._pixels_per_row = int(np.prod(row_shape[:-1], dtype=np.int64))
            self._total = np.zeros(channels, dtype=np.uint64)
            self._squares = np.zeros(channels, dtype=np.uint64)
            # squares are taken a slice at a time in this buffer, reused from call to call
            self._wide = np.empty((SQUARES_BYTES // (2 * channels), channels), dtype=np.uint16)
        elif task is Task.TEXT:
            self._shortest: int | None = None
            self._longest = 0
            self._characters = 0
        else:
            features = row_shape[0]
            self._names = schema.get("features") or [f"f{i}" for i in range(features)]
            self._present = np.zeros(features)
            self._sum = np.zeros(features)
            self._sum_squares = np.zeros(features)
            self._missing = np.zeros(features, dtype=np.int64)

    def add(self, split: str, rows: np.ndarray) -> None:
        """Account for ``rows`` of ``split`` (as stored: the prepared dtype and shape)."""
        if self.task is not Task.TABULAR and split != "train":
            return
        if split == "train":
            self.train_rows += len(rows)
        if self.task is Task.IMAGE:
            self._add_pixels(rows)
        elif self.task is Task.TEXT:
            self._add_texts(rows)
        else:
            self._add_features(split, rows)

    def _add_pixels(self, rows: np.ndarray) -> None:
        pixels = rows.reshape(-1, len(self._total))
        self._total += pixels.sum(axis=0, dtype=np.uint64)
        step = len(self._wide)
        for start in range(0, len(pixels), step):
            some = pixels[start : start + step]
            squared = self._wide[: len(some)]
            # 255**2 fits in uint16: exact integer sums, no float drift
            np.multiply(some, some, out=squared, dtype=np.uint16)
            self._squares += squared.sum(axis=0, dtype=np.uint64)

    def _add_texts(self, rows: np.ndarray) -> None:
        lengths = np.char.str_len(rows)
        if lengths.size:
            shortest = int(lengths.min())
            self._shortest = shortest if self._shortest is None else min(self._shortest, shortest)
            self._longest = max(self._longest, int(lengths.max()))
            self._characters += int(lengths.sum())

    def _add_features(self, split: str, rows: np.ndarray) -> None:
        missing = np.isnan(rows)
        self._missing += missing.sum(axis=0)
        if split != "train":
            return
        values = rows.astype(np.float64)
        values[missing] = 0.0
        self._present += len(rows) - missing.sum(axis=0)
        self._sum += values.sum(axis=0)
        self._sum_squares += (values**2).sum(axis=0)

    def result(self) -> dict[str, Any]:
        if self.task is Task.IMAGE:
            return self._image_result()
        if self.task is Task.TEXT:
            mean = self._characters / self.train_rows if self.train_rows else 0.0
            return {
                "length_min": self._shortest or 0,
                "length_max": self._longest,
                "length_mean": round(mean, 2),
            }
        return self._tabular_result()

    def _image_result(self) -> dict[str, Any]:
        count = max(1, self.train_rows * self._pixels_per_row)
        mean = self._total.astype(np.float64) / count
        var = np.maximum(self._squares.astype(np.float64) / count - mean**2, 0.0)
        return {
            "pixel_mean": [round(float(m), 4) for m in mean],
            "pixel_std": [round(float(s), 4) for s in np.sqrt(var)],
        }

    def _tabular_result(self) -> dict[str, Any]:
        present = np.maximum(self._present, 1)
        mean = self._sum / present
        std = np.sqrt(np.maximum(self._sum_squares / present - mean**2, 0.0))
        names = self._names
        return {
            "feature_mean": {n: _finite(v) for n, v in zip(names, mean, strict=True)},
            "feature_std": {n: _finite(v) for n, v in zip(names, std, strict=True)},
            "missing": {n: int(v) for n, v in zip(names, self._missing, strict=True)},
            "missing_total": int(self._missing.sum()),
        }


def _finite(value: float) -> float | None:
    """A JSON-safe figure: infinities (from infinite inputs) become None."""
    return round(float(value), 6) if np.isfinite(value) else None
