"""Write the prepared split files in one sequential pass over the examples.

The source parts are read a window (about :data:`~nimbus.datasets.rows.WINDOW_BYTES`) at a
time into one reused buffer; each window's rows are gathered split by split into one of two
more buffers, then appended to the split files they belong to (in source order, so every
split keeps its indices sorted) by a thread that hashes and writes them while the next
window is read and gathered into the other buffer. The pass holds three window-sized
buffers, however large the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nimbus.datasets.domain import SPLITS
from nimbus.datasets.rows import WINDOW_BYTES, NpyWriter, RowSource, WrittenFile, windows
from nimbus.datasets.splits import SplitPlan


def write_splits(
    parts: Sequence[RowSource],
    dtype: np.dtype[Any] | None,
    y: np.ndarray,
    plan: SplitPlan,
    workdir: Path,
    window_bytes: int = WINDOW_BYTES,
    observe: Callable[[str, np.ndarray], None] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, WrittenFile]:
    """Write ``{split}_x.npy`` and ``{split}_y.npy`` for every split (and ``{split}_g.npy``
    with ``groups``); return name -> file.

    ``parts`` concatenated are the examples, ``y`` their class indices, ``groups`` their
    group indices and ``plan`` the (sorted) example indices of each split. ``observe(split,
    rows)`` is shown every example once, as stored, on the way (e.g. to accumulate
    statistics).
    """
    # Labels first: their temporaries are gone before the examples' buffers are made.
    files = _write_labels(y, plan, workdir, window_bytes)
    if groups is not None:
        files.update(_write_labels(groups, plan, workdir, window_bytes, "g"))
    files.update(_write_examples(parts, dtype, plan, workdir, window_bytes, observe))
    return files


def _write_labels(
    y: np.ndarray, plan: SplitPlan, workdir: Path, window_bytes: int, part: str = "y"
) -> dict[str, WrittenFile]:
    files: dict[str, WrittenFile] = {}
    step = max(1, window_bytes // 8)
    for split in SPLITS:
        indices = plan.indices[split]
        path = workdir / f"{split}_{part}.npy"
        writer = NpyWriter(path, np.dtype(np.int64), (), len(indices))
        try:
            for start in range(0, len(indices), step):
                writer.write(y[indices[start : start + step]])
        finally:
            writer.file.close()
        written = writer.close()
        files[written.path.name] = written
    return files


def _write_examples(
    parts: Sequence[RowSource],
    dtype: np.dtype[Any] | None,
    plan: SplitPlan,
    workdir: Path,
    window_bytes: int,
    observe: Callable[[str, np.ndarray], None] | None,
) -> dict[str, WrittenFile]:
    total = sum(len(part) for part in parts)
    which = np.full(total, -1, dtype=np.int8)  # each example's split
    for number, split in enumerate(SPLITS):
        which[plan.indices[split]] = number
    out_dtype = np.dtype(dtype if dtype is not None else parts[0].dtype)
    row_shape = tuple(parts[0].shape[1:])
    row_items = max(1, int(np.prod(row_shape, dtype=np.int64)))
    capacity = max(1, window_bytes // (row_items * out_dtype.itemsize))  # rows a window
    writers = [
        NpyWriter(workdir / f"{split}_x.npy", out_dtype, row_shape, len(plan.indices[split]))
        for split in SPLITS
    ]
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="prepare") as writing:
            buffers = [np.empty((capacity, *row_shape), dtype=out_dtype) for _ in range(2)]
            pending: Future[None] | None = None
            offset = 0
            for part in parts:
                part_window = capacity * row_items * part.dtype.itemsize
                for start, rows in windows(part, part_window, reuse=True):
                    owner = which[offset + start : offset + start + len(rows)]
                    # The other buffer may still be being written; this one is free.
                    gathered, buffers = buffers[0], buffers[::-1]
                    pieces = _gather(rows.astype(out_dtype, copy=False), owner, gathered)
                    if observe is not None:
                        for number, first, stop in pieces:
                            observe(SPLITS[number], gathered[first:stop])
                    if pending is not None:
                        pending.result()
                    pending = writing.submit(_write_pieces, writers, gathered, pieces)
                offset += len(part)
            if pending is not None:
                pending.result()
    finally:
        for writer in writers:
            writer.file.close()
    written = [writer.close() for writer in writers]
    return {file.path.name: file for file in written}


def _gather(rows: np.ndarray, owner: np.ndarray, out: np.ndarray) -> list[tuple[int, int, int]]:
    """Copy ``rows`` into ``out`` grouped by split, in order within each; return the
    ``(split number, start, stop)`` of each group in ``out``."""
    pieces = []
    at = 0
    for number in range(len(SPLITS)):
        picked = np.flatnonzero(owner == number)
        if len(picked):
            # "clip" cannot matter (the indices are in range) but, unlike "raise", lets
            # take write straight into the buffer.
            np.take(rows, picked, axis=0, out=out[at : at + len(picked)], mode="clip")
            pieces.append((number, at, at + len(picked)))
            at += len(picked)
    return pieces


def _write_pieces(
    writers: list[NpyWriter], gathered: np.ndarray, pieces: list[tuple[int, int, int]]
) -> None:
    for number, start, stop in pieces:
        writers[number].write(gathered[start:stop])
