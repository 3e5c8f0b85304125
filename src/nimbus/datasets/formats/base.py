"""What every format reader receives and returns.

A reader turns an upload into a :class:`RawDataset`: example rows (possibly memory-mapped
files in the work directory, in several parts), the raw labels, and whatever the data says
about its own test split. Classes, splits and the prepared files are decided above it, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nimbus.datasets.domain import IngestLimits, IngestOptions, Task
from nimbus.datasets.rows import RowSource
from nimbus.errors import InvalidDataset


@dataclass(frozen=True)
class ReadContext:
    """Everything a reader may use besides the source file."""

    display: str  # how messages name the upload: the user's file name, else the source's
    options: IngestOptions
    limits: IngestLimits
    scratch: Path  # an existing directory for extracted and intermediate files

    def scratch_file(self, name: str) -> Path:
        """A path in the scratch directory; readers never write under a member's own name."""
        return self.scratch / name


@dataclass
class RawDataset:
    """Examples as read, before classes and splits.

    ``x_parts`` (in-memory arrays or :class:`~nimbus.datasets.rows.FileRows`) concatenated
    along axis 0 are the examples (row shapes agree); ``labels`` is
    1-D with one raw label (int, float, bool or str) per example; ``test_mask`` marks the
    examples of the data's own test split, when it has one.
    """

    task: Task
    x_parts: Sequence[RowSource]
    labels: np.ndarray
    schema: dict[str, Any]
    test_mask: np.ndarray | None = None
    dtype: np.dtype[Any] | None = None  # stored dtype; None keeps the parts' dtype
    stats: dict[str, Any] = field(default_factory=dict)
    groups: np.ndarray | None = None  # each example's value of options.group_column (str)

    def __post_init__(self) -> None:
        if not self.x_parts:
            raise ValueError("a RawDataset needs at least one part")
        rows = sum(len(part) for part in self.x_parts)
        if rows != len(self.labels):
            raise ValueError(f"{rows} examples but {len(self.labels)} labels")
        if self.test_mask is not None and len(self.test_mask) != rows:
            raise ValueError("test_mask does not cover every example")
        if self.groups is not None and len(self.groups) != rows:
            raise ValueError("groups do not cover every example")

    @property
    def size(self) -> int:
        return len(self.labels)


class Reader(Protocol):
    """A format: reads ``source`` into a RawDataset or raises InvalidDataset."""

    def __call__(self, source: Path, ctx: ReadContext) -> RawDataset: ...


def to_fixed_unicode(texts: Sequence[str], ctx: ReadContext) -> np.ndarray:
    """Texts as one fixed-width ``<U`` array (never object dtype), within the byte limit."""
    width = max((len(text) for text in texts), default=0)
    needed = len(texts) * max(width, 1) * 4
    if needed > ctx.limits.max_unpacked_bytes:
        raise InvalidDataset(
            f"{ctx.display!r}: the longest text has {width} characters; storing {len(texts)} "
            f"texts at that width needs {needed} bytes, over the limit of "
            f"{ctx.limits.max_unpacked_bytes}"
        )
    return np.array(texts, dtype=f"<U{max(width, 1)}")


def mixed_labels(values: Sequence[int | str]) -> np.ndarray:
    """Python label values (ints and/or strings) as one numpy array; mixtures become strings."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    return np.array([str(v) for v in values], dtype=str)
