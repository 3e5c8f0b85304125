"""Domain objects of datasets: tasks, formats, ingest options and the prepared result.

Plain dataclasses: no HTTP, no SQL. The ingest pipeline produces a
:class:`PreparedDataset` (metadata plus training-ready files in a work directory);
the dataset service stores those files as blobs and the metadata as a version row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


class Task(StrEnum):
    IMAGE = "image-classification"
    TEXT = "text-classification"
    TABULAR = "tabular-classification"


class Format(StrEnum):
    IMAGE_FOLDER = "image-folder"  # zip / tar / tar.gz of class sub-folders of PNG/JPEG
    IDX = "idx"  # MNIST IDX files, in a directory or an archive
    NPZ = "npz"  # arrays x and y
    TEXT_CSV = "text-csv"  # text,label columns
    TEXT_JSONL = "text-jsonl"  # {"text": ..., "label": ...} per line
    TABULAR_CSV = "tabular-csv"  # feature columns and a label column
    PARQUET = "parquet"  # feature columns and a label column


@dataclass(frozen=True)
class IngestOptions:
    """What the user said about an upload; None means auto-detect."""

    task: Task | None = None
    format: Format | None = None
    label: str | None = None  # the label column of tabular data
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    image_size: tuple[int, int] | None = None  # (height, width) images are brought to
    image_fit: str | None = None  # "crop" or "pad" (datasets/imagefit.py); None: crop
    # A sensitive attribute's column (tables and text): kept apart from the features, its
    # groups are evaluated separately (runtime/fairness.py).
    group_column: str | None = None

    def canonical(self) -> dict[str, Any]:
        """Everything that changes the prepared data, for the version's content hash."""
        canonical: dict[str, Any] = {
            "task": str(self.task) if self.task else None,
            "format": str(self.format) if self.format else None,
            "label": self.label,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }
        # Only when given: the hashes of uploads made without them stay what they were.
        if self.image_size is not None:
            canonical["image_size"] = list(self.image_size)
        if self.image_fit is not None:
            canonical["image_fit"] = self.image_fit
        if self.group_column is not None:
            canonical["group_column"] = self.group_column
        return canonical


@dataclass(frozen=True)
class IngestLimits:
    """Guards against hostile or accidental giant inputs."""

    max_unpacked_bytes: int = 16 * 1024**3
    max_members: int = 2_000_000
    max_image_pixels: int = 40_000_000
    max_compression_ratio: float = 200.0


@dataclass
class SplitInfo:
    size: int
    per_class: dict[str, int]


@dataclass
class PreparedDataset:
    """The result of ingest: metadata plus training-ready files.

    ``files`` maps names to paths in the ingest work directory: for each split
    ``{split}_x.npy`` and ``{split}_y.npy`` (labels int64 class indices; x is uint8
    ``[N, H, W, C]`` for images, a fixed-width unicode ``str`` array for text, float32
    ``[N, F]`` for tabular). Every .npy loads with ``np.load(mmap_mode="r")`` and
    ``allow_pickle=False``.
    """

    task: Task
    format: Format
    classes: list[str]
    splits: dict[str, SplitInfo]
    schema: dict[str, Any]  # e.g. {"shape": [28, 28, 1], "dtype": "uint8"} or feature names
    stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    split_source: str = "seeded"  # "given" when the data had its own test split
    # SHA-256 of those files whose hash was computed as they were written (by name); the
    # others are hashed when they are stored.
    digests: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """JSON-ready metadata stored with the version."""
        return {
            "classes": self.classes,
            "num_classes": len(self.classes),
            "splits": {
                name: {"size": s.size, "per_class": s.per_class} for name, s in self.splits.items()
            },
            "schema": self.schema,
            "stats": self.stats,
            "split_source": self.split_source,
        }
