"""A few examples of a prepared dataset version, for people to look at (the console's sample
grid and sample rows).

Only the head of a split's files is read: prepared splits are shuffled at ingest, so their
first rows are a fair sample, and a version of millions of images costs no more to show than
one of a hundred. What is read of a blob this way is not checked against its hash (that
needs the whole blob); the samples are for display only, never for training or download.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib import format as npy
from PIL import Image

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidDataset

LIMIT = 24  # examples shown per version
SCAN_ROWS = 4096  # labels looked at to find a few examples of each class
SCAN_BYTES = 32 * 1024 * 1024  # of the inputs' file, at most
THUMBNAIL = 256  # largest side of a sample image, in pixels
TEXT_CHARS = 300  # of a text shown
COLUMNS = 12  # of a table shown


@dataclass(frozen=True)
class Sample:
    """One example: its class and position in the split; ``png`` for an image, ``text``
    for a text, ``values`` for a table's row."""

    label: str
    index: int
    png: bytes | None = None
    text: str | None = None
    values: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class Samples:
    split: str
    task: Task
    items: tuple[Sample, ...]
    columns: tuple[str, ...] = ()  # a table's feature names shown
    hidden_columns: int = 0  # a table's features not shown
    scanned: int = 0  # examples looked at


class _Head:
    """Bytes from the start of a stream of chunks, read as needed."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._offset = 0

    def read(self, size: int) -> bytes:
        while len(self._buffer) - self._offset < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        data = bytes(self._buffer[self._offset : self._offset + size])
        self._offset += len(data)
        return data


def read_head(chunks: Iterator[bytes], max_rows: int, max_bytes: int) -> np.ndarray:
    """The first rows of the ``.npy`` file streamed as ``chunks``: at most ``max_rows`` and,
    past the first row, at most ``max_bytes`` of data."""
    head = _Head(chunks)
    try:
        version = npy.read_magic(head)  # type: ignore[arg-type]
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(head)  # type: ignore[arg-type]
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(head)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise InvalidDataset(f"a prepared file cannot be read: {exc}") from None
    if fortran or dtype.hasobject or not shape:
        raise InvalidDataset("a prepared file is not a C-ordered array of plain values")
    row_shape = tuple(shape[1:])
    row_bytes = max(1, dtype.itemsize * int(np.prod(row_shape, dtype=np.int64)))
    rows = min(int(shape[0]), max_rows, max(1, max_bytes // row_bytes))
    data = head.read(rows * row_bytes)
    rows = len(data) // row_bytes
    return np.frombuffer(data[: rows * row_bytes], dtype=dtype).reshape((rows, *row_shape))


def pick(labels: np.ndarray, limit: int = LIMIT) -> list[int]:
    """Up to ``limit`` positions, a few of each class: the first example of every class
    present, then the second of each, and so on; ordered by class, then position."""
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels.tolist()):
        by_class.setdefault(int(label), []).append(position)
    chosen: list[tuple[int, int]] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(p) for p in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < limit:
                chosen.append((label, by_class[label][depth]))
        depth += 1
    return [position for _, position in sorted(chosen)]


def _png(row: np.ndarray) -> bytes:
    pixels = np.ascontiguousarray(row, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def build(
    split: str,
    task: Task,
    classes: list[str],
    schema: dict[str, Any],
    labels: np.ndarray,
    inputs: np.ndarray,
    limit: int = LIMIT,
) -> Samples:
    """The samples of a split from the heads of its label and input files."""
    count = min(len(labels), len(inputs))
    chosen = pick(labels[:count], limit)

    def label_of(position: int) -> str:
        index = int(labels[position])
        return classes[index] if 0 <= index < len(classes) else str(index)

    items: list[Sample] = []
    columns: tuple[str, ...] = ()
    hidden = 0
    if task is Task.TABULAR:
        width = inputs.shape[1] if inputs.ndim == 2 else 0
        names = list(schema.get("features") or [f"f{i}" for i in range(width)])
        columns = tuple(str(n) for n in names[:COLUMNS])
        hidden = max(0, width - len(columns))
    for position in chosen:
        row = inputs[position]
        label = label_of(position)
        if task is Task.IMAGE:
            items.append(Sample(label, position, png=_png(row)))
        elif task is Task.TEXT:
            items.append(Sample(label, position, text=str(row)[:TEXT_CHARS]))
        else:
            values = tuple(_finite(v) for v in np.asarray(row, np.float64)[: len(columns)])
            items.append(Sample(label, position, values=values))
    return Samples(split, task, tuple(items), columns, hidden, count)


@dataclass
class SampleCache:
    """The samples of the versions looked at last, by their files' blob keys (content
    addressed: a key's samples never change)."""

    size: int = 8
    _entries: OrderedDict[str, Samples] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> Samples | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, samples: Samples) -> None:
        with self._lock:
            self._entries[key] = samples
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
