"""Tiny, deterministic datasets for the runtime and registry tests."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits, make_blobs

from nimbus.datasets.domain import Task
from nimbus.runtime.data import DataSplits, Split


def _split(x: np.ndarray, y: np.ndarray, val: int, test: int) -> tuple[Split, Split, Split]:
    n = len(y) - val - test
    return (
        Split(x[:n], y[:n]),
        Split(x[n : n + val], y[n : n + val]),
        Split(x[n + val :], y[n + val :]),
    )


def digits(limit: int | None = None) -> DataSplits:
    """sklearn's bundled 8x8 digits as uint8 NHWC images (1,797 examples, 10 classes)."""
    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))[:limit]
    x = np.clip(bunch.images[order] * 16, 0, 255).astype(np.uint8)[..., None]
    y = bunch.target[order].astype(np.int64)
    val = test = len(y) // 8
    return DataSplits(Task.IMAGE, [str(i) for i in range(10)], *_split(x, y, val, test))


WORDS = {
    "sport": ["goal", "match", "team", "score", "coach", "league"],
    "food": ["pizza", "bread", "cheese", "soup", "salad", "cake"],
    "tech": ["code", "chip", "laptop", "server", "robot", "cloud"],
}
FILLER = ["the", "a", "today", "was", "really", "very", "and", "of", "we", "it"]


def text(n: int = 240) -> DataSplits:
    """Short sentences whose class shows in a few topic words among filler."""
    rng = np.random.default_rng(1)
    classes = list(WORDS)
    y = rng.integers(0, len(classes), size=n).astype(np.int64)
    sentences = []
    for label in y:
        words = list(rng.choice(FILLER, size=5)) + list(rng.choice(WORDS[classes[label]], 2))
        rng.shuffle(words)
        sentences.append(" ".join(words).capitalize() + "!")
    x = np.array(sentences, dtype=str)
    return DataSplits(Task.TEXT, classes, *_split(x, y, n // 8, n // 8))


def tabular(n: int = 400, missing: bool = True) -> DataSplits:
    """Three Gaussian blobs in 5 features on wildly different scales, some values missing."""
    x, y = make_blobs(n_samples=n, centers=3, n_features=5, cluster_std=1.5, random_state=2)
    x = (x * np.array([1.0, 100.0, 0.01, 1000.0, 5.0]) + 50.0).astype(np.float32)
    if missing:
        x[np.random.default_rng(3).random(x.shape) < 0.05] = np.nan
    features = ["a", "b", "c", "d", "e"]
    splits = _split(x, y.astype(np.int64), n // 8, n // 8)
    return DataSplits(Task.TABULAR, ["x", "y", "z"], *splits, features=features)


def tiny_images(n: int = 37, size: int = 6, channels: int = 3) -> DataSplits:
    """Random colour images whose class is their brightest channel: quick and learnable."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, channels, size=n).astype(np.int64)
    x = rng.integers(0, 120, size=(n, size, size, channels)).astype(np.uint8)
    x[np.arange(n), :, :, y] += 120
    classes = [f"c{i}" for i in range(channels)]
    return DataSplits(Task.IMAGE, classes, *_split(x, y, 5, 5))
