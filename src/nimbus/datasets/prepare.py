"""Write the prepared split files in one sequential pass over the examples.

The source parts are read a window (about :data:`~nimbus.datasets.rows.WINDOW_BYTES`) at a
time; each window's rows go to the split files they belong to, appended in source order, so
every split keeps its indices sorted and no more than one window is ever held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nimbus.datasets.model import SPLITS
from nimbus.datasets.rows import WINDOW_BYTES, NpyWriter, RowSource, windows
from nimbus.datasets.splits import SplitPlan


def write_splits(
    parts: Sequence[RowSource],
    dtype: np.dtype[Any] | None,
    y: np.ndarray,
    plan: SplitPlan,
    workdir: Path,
    window_bytes: int = WINDOW_BYTES,
) -> dict[str, Path]:
    """Write ``{split}_x.npy`` and ``{split}_y.npy`` for every split; return name -> path.

    ``parts`` concatenated are the examples, ``y`` their class indices and ``plan`` the
    (sorted) example indices of each split.
    """
    total = sum(len(part) for part in parts)
    which = np.full(total, -1, dtype=np.int8)  # each example's split
    for number, split in enumerate(SPLITS):
        which[plan.indices[split]] = number
    out_dtype = np.dtype(dtype if dtype is not None else parts[0].dtype)
    row_shape = tuple(parts[0].shape[1:])
    files: dict[str, Path] = {}
    writers = []
    for split in SPLITS:
        path = workdir / f"{split}_x.npy"
        writers.append(NpyWriter(path, out_dtype, row_shape, len(plan.indices[split])))
        files[path.name] = path
    try:
        offset = 0
        for part in parts:
            for start, rows in windows(part, window_bytes):
                owner = which[offset + start : offset + start + len(rows)]
                for number, writer in enumerate(writers):
                    writer.write(rows[owner == number])
            offset += len(part)
    finally:
        for writer in writers:
            writer.file.close()
    for writer in writers:
        writer.close()
    for split in SPLITS:
        path = workdir / f"{split}_y.npy"
        labels = np.ascontiguousarray(y[plan.indices[split]], dtype=np.int64)
        np.save(path, labels, allow_pickle=False)
        files[path.name] = path
    return files
