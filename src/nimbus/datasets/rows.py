"""Example rows on disk, read and written in windows with plain file I/O.

Big inputs (IDX pixels, decoded images, .npy arrays) stay in files: :class:`FileRows` reads a
window of rows at a time and :class:`NpyWriter` appends rows to a ``.npy``. Neither maps the
file, so a process's resident memory holds one window, not the dataset, however large the
upload; the kernel's page cache does the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy

WINDOW_BYTES = 64 * 1024 * 1024


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

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array) as a fresh in-memory array."""
        stop = min(stop, len(self))
        count = max(0, stop - start)
        with self.path.open("rb") as f:
            f.seek(self.offset + start * self.row_items * self.dtype.itemsize)
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


def windows(part: RowSource, max_bytes: int = WINDOW_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` windows of about ``max_bytes`` covering ``part`` in order."""
    row_bytes = max(1, int(np.prod(part.shape[1:], dtype=np.int64)) * part.dtype.itemsize)
    step = max(1, max_bytes // row_bytes)
    for start in range(0, len(part), step):
        if isinstance(part, FileRows):
            yield start, part.read(start, start + step)
        else:
            yield start, np.asarray(part[start : start + step])


class NpyWriter:
    """Appends rows to a new ``.npy`` of a known final shape."""

    def __init__(
        self, path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...], count: int
    ) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.count = count
        self.written = 0
        self.file: BinaryIO = path.open("wb")
        header = {
            "descr": npy.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (count, *row_shape),
        }
        npy.write_array_header_1_0(self.file, header)

    def write(self, rows: np.ndarray) -> None:
        """Append rows (cast to the file's dtype)."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of {rows.shape[1:]} written to a file of {self.row_shape}")
        np.ascontiguousarray(rows, dtype=self.dtype).tofile(self.file)
        self.written += len(rows)

    def close(self) -> None:
        """Finish the file; it must hold exactly the rows its header promised."""
        self.file.close()
        if self.written != self.count:
            raise ValueError(f"{self.path}: wrote {self.written} rows, header says {self.count}")
