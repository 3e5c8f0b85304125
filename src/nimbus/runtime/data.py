"""The prepared data a job trains on: numpy arrays per split, possibly memory-mapped.

Arrays follow :class:`nimbus.datasets.domain.PreparedDataset`: labels int64 class
indices; x uint8 ``[N, H, W, C]`` (images), unicode strings ``[N]`` (text) or float32
``[N, F]`` (tabular). A split is read into memory when it fits the budget the caller
gives (a job: a share of its memory limit), so a training step gathers its batch from
memory as a plain loop over in-memory arrays would; larger splits stay memory-mapped:
statistics are then computed in chunks and batches are read in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nimbus.datasets.domain import SPLITS, Task
from nimbus.errors import InvalidDataset

_CHUNK = 4096


@dataclass(frozen=True)
class Split:
    """One split's examples ``x`` and class indices ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Groups:
    """A sensitive attribute of the test split: each example's index into ``names``."""

    column: str
    names: list[str]
    test: np.ndarray


@dataclass(frozen=True)
class DataSplits:
    """Train, val and test splits of one dataset version, with its task and classes."""

    task: Task
    classes: list[str]
    train: Split
    val: Split
    test: Split
    features: list[str] | None = None  # tabular column names
    # How ingest fitted the images (datasets/imagefit.py), carried into the model's spec.
    image_transform: dict[str, Any] | None = None
    # A sensitive attribute (the upload's group column): its name, the groups' names and
    # each test example's group index; evaluation reports per group (runtime/fairness.py).
    groups: Groups | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        if len(self.classes) < 2:
            raise InvalidDataset("a classifier needs at least two classes")
        if len(self.train) == 0:
            raise InvalidDataset("the train split is empty")
        ndim = {Task.IMAGE: 4, Task.TEXT: 1, Task.TABULAR: 2}[Task(self.task)]
        for name in SPLITS:
            split: Split = getattr(self, name)
            if split.y.ndim != 1 or len(split.x) != len(split.y):
                raise InvalidDataset(f"{name}: x and y disagree on the number of examples")
            if len(split) and split.x.ndim != ndim:
                raise InvalidDataset(f"{name}: x must have {ndim} dimensions for {self.task}")
            if len(split) and (split.y.min() < 0 or split.y.max() >= len(self.classes)):
                raise InvalidDataset(f"{name}: labels outside [0, {len(self.classes)})")
        if self.task == Task.IMAGE and self.train.x.dtype != np.uint8:
            raise InvalidDataset("image arrays must be uint8 [N, H, W, C]")
        if self.groups is not None and len(self.groups.test) != len(self.test):
            raise InvalidDataset("test: groups and examples disagree on their number")
        if self.features is not None and (
            self.task != Task.TABULAR or len(self.features) != self.train.x.shape[1]
        ):
            raise InvalidDataset("feature names must match the tabular columns")

    @classmethod
    def load(
        cls,
        directory: Path,
        task: Task,
        classes: list[str],
        features: list[str] | None = None,
        image_transform: dict[str, Any] | None = None,
        *,
        in_memory_bytes: int = 0,
        groups: dict[str, Any] | None = None,
    ) -> DataSplits:
        """Open ``{split}_x.npy`` / ``{split}_y.npy`` under ``directory``, memory-mapped;
        the splits whose examples fit in ``in_memory_bytes`` together (train first, then
        val, then test) are read into memory. ``groups``: the schema's block (``column``,
        ``values``) when the version has a group column: ``test_g.npy`` is read too."""
        splits = {}
        budget = in_memory_bytes
        for name in SPLITS:
            x = np.load(directory / f"{name}_x.npy", mmap_mode="r", allow_pickle=False)
            if x.nbytes <= budget:
                budget -= x.nbytes
                x = np.array(x)
            y = np.asarray(np.load(directory / f"{name}_y.npy", allow_pickle=False), np.int64)
            splits[name] = Split(x=x, y=y)
        found = None
        if groups is not None and (directory / "test_g.npy").is_file():
            test_g = np.load(directory / "test_g.npy", allow_pickle=False)
            found = Groups(str(groups["column"]), [str(v) for v in groups["values"]], test_g)
        return cls(
            task=task,
            classes=classes,
            features=features,
            image_transform=image_transform,
            groups=found,
            **splits,
        )


def gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``x`` as an in-memory array; from a memory-mapped file, read in
    file order (kind to the disk)."""
    if not isinstance(x, np.memmap):
        rows: np.ndarray = x[idx]
        return rows
    sorter = np.argsort(idx, kind="stable")
    mapped = np.asarray(x[idx[sorter]])
    out = np.empty_like(mapped)
    out[sorter] = mapped
    return out


def channel_stats(x: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x * scale`` over ``[N, H, W, C]``, in chunks."""
    channels = x.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(x), _CHUNK):
        chunk = np.asarray(x[start : start + _CHUNK], dtype=np.float64) * scale
        total += chunk.sum(axis=(0, 1, 2))
        squares += (chunk * chunk).sum(axis=(0, 1, 2))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean.tolist(), _safe_std(std)


def feature_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and std of ``[N, F]``, ignoring non-finite values, in chunks.

    A column with no finite value gets mean 0; a constant one std 1.
    """
    features = x.shape[1]
    total = np.zeros(features)
    squares = np.zeros(features)
    count = np.zeros(features)
    for start in range(0, len(x), _CHUNK):
        chunk = np.asarray(x[start : start + _CHUNK], dtype=np.float64)
        finite = np.isfinite(chunk)
        chunk = np.where(finite, chunk, 0.0)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
        count += finite.sum(axis=0)
    seen = np.maximum(count, 1)
    mean = np.where(count > 0, total / seen, 0.0)
    std = np.sqrt(np.maximum(squares / seen - mean * mean, 0.0))
    return mean.tolist(), _safe_std(std)


def _safe_std(std: np.ndarray) -> list[float]:
    return [float(s) if np.isfinite(s) and s > 1e-8 else 1.0 for s in std]
