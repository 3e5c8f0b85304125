"""npz: numpy arrays ``x`` and ``y`` (or ``x_train``/``y_train`` with ``x_test``/``y_test``).

An .npz is a zip of .npy files, so it is read with the safe archive reader: the arrays are
copied into the scratch directory and described from their headers (object arrays are
refused there, nothing is ever unpickled); ``x`` is later read from its file in windows.
What ``x`` holds decides the task: uint8 ``[N, H, W]`` or ``[N, H, W, C]`` images, 2-D
numbers (tabular features), or 1-D strings (texts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nimbus.datasets.archive import copy_member, iter_files
from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.rows import FileRows, RowSource
from nimbus.errors import InvalidDataset

_SETS = (("x", "y", False), ("x_train", "y_train", False), ("x_test", "y_test", True))
_WANTED = frozenset(name for x, y, _ in _SETS for name in (x, y))


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Load the labelled arrays of an .npz and decide the task from ``x``."""
    arrays: dict[str, RowSource] = {}
    found: list[str] = []
    for number, member in enumerate(iter_files(source, ctx.limits, ctx.display)):
        name = member.path.removesuffix(".npy")
        found.append(name)
        if name in _WANTED:
            dest = ctx.scratch_file(f"npz-{number}.npy")
            copy_member(member, dest)
            arrays[name] = _load(dest, name, ctx)
    sets = [
        (arrays[x], _labels(arrays[y], y, ctx), test)
        for x, y, test in _SETS
        if x in arrays and y in arrays
    ]
    if not sets or (len(sets) == 1 and sets[0][2]):
        raise InvalidDataset(
            f"{ctx.display!r} must hold arrays 'x' and 'y' (or 'x_train' and 'y_train'); "
            f"found {sorted(found)[:10]}"
        )
    x0 = sets[0][0]
    for x, y, _ in sets:
        if len(x) != len(y):
            raise InvalidDataset(
                f"{ctx.display!r}: x has {len(x)} rows but y has {len(y)} labels; "
                "y must hold one label per row of x"
            )
        if x.shape[1:] != x0.shape[1:] or x.dtype != x0.dtype:
            raise InvalidDataset(f"{ctx.display!r}: the train and test arrays differ in shape")
    if len({y.dtype.kind == "U" for _, y, _ in sets}) > 1:
        raise InvalidDataset(f"{ctx.display!r}: train labels and test labels differ in type")
    task, parts, schema = _features(x0, [x for x, _, _ in sets], ctx)
    labels = np.concatenate([y for _, y, _ in sets])
    mask = np.concatenate([np.full(len(y), test) for _, y, test in sets])
    return RawDataset(
        task=task,
        x_parts=parts,
        labels=labels,
        schema=schema,
        test_mask=mask if mask.any() else None,
        dtype=np.dtype(np.float32) if task is Task.TABULAR else None,
    )


def _load(path: Path, name: str, ctx: ReadContext) -> RowSource:
    where = f"{ctx.display!r}: array {name!r}"
    try:
        rows: RowSource = FileRows.from_npy(path)
    except ValueError as exc:
        if "object" in str(exc):
            raise InvalidDataset(
                f"{where} holds Python objects; object arrays are refused"
            ) from exc
        if "Fortran" not in str(exc):
            raise InvalidDataset(f"{where} is not a valid .npy ({exc})") from exc
        rows = np.load(path, mmap_mode="r", allow_pickle=False)  # column-major: map it
    except (OSError, EOFError) as exc:
        raise InvalidDataset(f"{where} cannot be read ({exc})") from exc
    if len(rows.shape) == 0:
        raise InvalidDataset(f"{where} is a scalar, not one row per example")
    return rows


def _features(
    x: RowSource, xs: list[RowSource], ctx: ReadContext
) -> tuple[Task, list[RowSource], dict[str, Any]]:
    kind, shape = x.dtype.kind, x.shape
    if len(shape) in (3, 4) and x.dtype == np.uint8:
        channels = 1 if len(shape) == 3 else shape[3]
        if channels not in (1, 3) or shape[1] * shape[2] > ctx.limits.max_image_pixels:
            raise InvalidDataset(
                f"{ctx.display!r}: image array x has shape {list(shape)}; expected [N, H, W] or "
                f"[N, H, W, C] with C 1 or 3 and at most {ctx.limits.max_image_pixels} pixels"
            )
        parts = [_with_channels(a, channels) for a in xs]
        return Task.IMAGE, parts, {"shape": [shape[1], shape[2], channels], "dtype": "uint8"}
    if len(shape) == 2 and kind in "biuf":
        features = [f"f{i}" for i in range(shape[1])]
        schema = {"shape": [shape[1]], "dtype": "float32", "features": features}
        return Task.TABULAR, xs, schema
    if len(shape) == 1 and kind == "U":
        return Task.TEXT, xs, {"dtype": "str", "max_length": x.dtype.itemsize // 4}
    raise InvalidDataset(
        f"{ctx.display!r}: array x has shape {list(shape)} and dtype {x.dtype}; expected uint8 "
        "images [N, H, W(, C)], 2-D numeric features or 1-D strings"
    )


def _with_channels(x: RowSource, channels: int) -> RowSource:
    if isinstance(x, FileRows):
        return x.with_row_shape(x.shape[1], x.shape[2], channels)
    return x.reshape(*x.shape[:3], channels)


def _labels(y: RowSource, name: str, ctx: ReadContext) -> np.ndarray:
    labels = y.read(0, len(y)) if isinstance(y, FileRows) else np.asarray(y)
    if labels.ndim != 1 and labels.shape[1:] != (1,):
        raise InvalidDataset(
            f"{ctx.display!r}: array {name!r} has shape {list(labels.shape)}; labels must be 1-D"
        )
    labels = labels.reshape(-1)
    if labels.dtype.kind not in "biufU":
        raise InvalidDataset(
            f"{ctx.display!r}: {name!r} must hold integers or strings, not {labels.dtype}"
        )
    return labels
