"""Raw labels to classes: sorted class names and int64 class indices."""

from __future__ import annotations

import re

import numpy as np

from nimbus.errors import InvalidDataset

_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# Each class is listed per split in the version's metadata; more classes than this almost
# always means the wrong column was taken for the label (an ID, a price).
MAX_CLASSES = 50_000


def encode_labels(labels: np.ndarray, display: str) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each example's class index; see :func:`_encode`."""
    classes, index = _encode(labels, display)
    if len(classes) > MAX_CLASSES:
        raise InvalidDataset(
            f"{display!r} has {len(classes)} distinct labels, over the limit of {MAX_CLASSES} "
            "classes; is the label column the right one?"
        )
    return classes, index


def _encode(labels: np.ndarray, display: str) -> tuple[list[str], np.ndarray]:
    """Sorted class names (numeric labels sorted numerically) and each example's class index.

    Integer labels, integral floats, booleans and strings are accepted; strings that all
    spell integers ("2", "10") sort as numbers too, so folder names 0..10 keep their order.
    """
    values = np.asarray(labels).reshape(-1)
    kind = values.dtype.kind
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if bad.size:
            raise InvalidDataset(
                f"{display!r}: labels must be integers or strings; example {bad[0] + 1} has "
                f"label {values[bad[0]].item()!r}"
            )
        values = values.astype(np.int64)
        kind = "i"
    if kind == "b":
        values = values.astype(str)
        kind = "U"
    if kind in "iu":
        uniques, index = _unique_ints(values)
        return [str(int(u)) for u in uniques], index
    if kind != "U":
        raise InvalidDataset(f"{display!r}: labels must be integers or strings, not {values.dtype}")
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise InvalidDataset(f"{display!r}: example {empty[0] + 1} has an empty label")
    uniques, index = np.unique(values, return_inverse=True)
    names = [str(u) for u in uniques]
    if all(_CANONICAL_INT.fullmatch(name) for name in names):
        order = np.argsort([int(name) for name in names], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return [names[i] for i in order], rank[index].astype(np.int64, copy=False).reshape(-1)
    return names, index.astype(np.int64, copy=False).reshape(-1)


def _unique_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each value's int64 index among them, as ``np.unique``
    with ``return_inverse`` gives them. Small non-negative labels (class numbers, the
    common case) are counted instead of sorted: linear time, and no temporaries several
    times the size of the labels (millions of them for a big image set)."""
    if values.size and values.min() >= 0 and values.max() <= max(1 << 16, values.size):
        present = np.bincount(values) > 0
        uniques = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.int64) - 1  # value -> its rank among uniques
        return uniques.astype(values.dtype), lookup[values]
    uniques, index = np.unique(values, return_inverse=True)
    return uniques, index.astype(np.int64, copy=False).reshape(-1)
