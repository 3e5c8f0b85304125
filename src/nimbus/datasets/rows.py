"""Example rows on disk, read and written in windows with plain file I/O.

Big inputs (IDX pixels, decoded images, .npy arrays) stay in files: :class:`FileRows` reads a
window of rows at a time and :class:`NpyWriter` appends rows to a ``.npy``, hashing them as it
goes. Neither maps the file, so a process's resident memory holds a window or two, not the
dataset, however large the upload; the kernel's page cache does the rest.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy

# Big enough that per-window Python work is noise (256 windows per GiB), small enough that
# the few window-sized buffers of a pass stay a small part of the server's memory.
WINDOW_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileRows:
    """A C-ordered array of ``shape`` (rows first) stored at ``offset`` in ``path``."""

    path: Path
    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_items(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def row_bytes(self) -> int:
        return self.row_items * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array) as a fresh in-memory array."""
        stop = min(stop, len(self))
        count = max(0, stop - start)
        with self.path.open("rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            data = np.fromfile(f, dtype=self.dtype, count=count * self.row_items)
        if data.size != count * self.row_items:
            raise ValueError(f"{self.path} ends before row {stop}")
        return data.reshape(count, *self.shape[1:])

    def with_row_shape(self, *row_shape: int) -> FileRows:
        """The same bytes seen with another row shape of the same size (e.g. adding C=1)."""
        if int(np.prod(row_shape, dtype=np.int64)) != self.row_items:
            raise ValueError(f"cannot view rows of {self.shape[1:]} as {row_shape}")
        return FileRows(self.path, self.offset, self.dtype, (len(self), *row_shape))

    @classmethod
    def from_npy(cls, path: Path) -> FileRows:
        """The array of a ``.npy`` file, from its header alone (nothing is unpickled).

        Raises ValueError for Fortran-ordered arrays and object dtypes.
        """
        with path.open("rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        if fortran and len(shape) > 1:
            raise ValueError("Fortran-ordered arrays are not supported")
        return cls(path, offset, dtype, tuple(shape))


RowSource = np.ndarray | FileRows


def windows(
    part: RowSource, max_bytes: int = WINDOW_BYTES, *, reuse: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` windows of about ``max_bytes`` covering ``part`` in order.

    With ``reuse``, the rows of a file are read into one buffer for the whole pass (no
    allocation, no fresh pages per window): each window is then only valid until the next
    one is asked for. Windows of an in-memory array are views of it either way.
    """
    row_bytes = max(1, int(np.prod(part.shape[1:], dtype=np.int64)) * part.dtype.itemsize)
    step = max(1, max_bytes // row_bytes)
    if not isinstance(part, FileRows):
        for start in range(0, len(part), step):
            yield start, np.asarray(part[start : start + step])
        return
    if not reuse:
        for start in range(0, len(part), step):
            yield start, part.read(start, start + step)
        return
    buffer = np.empty((min(step, len(part)), *part.shape[1:]), dtype=part.dtype)
    with part.path.open("rb", buffering=0) as f:
        f.seek(part.offset)
        for start in range(0, len(part), step):
            rows = buffer[: min(step, len(part) - start)]
            _read_exactly(f, rows, part.path)
            yield start, rows


def _read_exactly(f: BinaryIO, rows: np.ndarray, path: Path) -> None:
    """Fill ``rows`` (C-contiguous) with the next bytes of ``f``."""
    view = rows.reshape(-1).view(np.uint8).data
    while view:
        got = f.readinto(view)  # type: ignore[attr-defined]
        if not got:
            raise ValueError(f"{path} ends before the rows its header describes")
        view = view[got:]


@dataclass(frozen=True)
class WrittenFile:
    """A file as written: where, its SHA-256 and its size in bytes."""

    path: Path
    sha256: str
    size: int


class NpyWriter:
    """Appends rows to a new ``.npy`` of a known final shape, hashing every byte it writes
    (so that storing the file as a blob needs no second pass over it)."""

    def __init__(
        self, path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], count: int
    ) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.count = count
        self.written = 0
        self.size = 0
        self._digest = hashlib.sha256()
        self.file: BinaryIO = path.open("wb")
        header = io.BytesIO()
        npy.write_array_header_1_0(
            header,
            {
                "descr": npy.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (count, *row_shape),
            },
        )
        self._put(header.getbuffer())

    def write(self, rows: np.ndarray) -> None:
        """Append rows (cast to the file's dtype)."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of {rows.shape[1:]} written to a file of {self.row_shape}")
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        self._put(data.reshape(-1).view(np.uint8).data)
        self.written += len(rows)

    def _put(self, data: memoryview) -> None:
        self._digest.update(data)
        self.file.write(data)
        self.size += len(data)

    def close(self) -> WrittenFile:
        """Finish the file; it must hold exactly the rows its header promised."""
        self.file.close()
        if self.written != self.count:
            raise ValueError(f"{self.path}: wrote {self.written} rows, header says {self.count}")
        return WrittenFile(self.path, self._digest.hexdigest(), self.size)
