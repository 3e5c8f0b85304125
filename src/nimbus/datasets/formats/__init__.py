"""One module per input format; :data:`READERS` is the one place a format picks its reader.

The table formats (tabular-csv, parquet, text-csv) read through pyarrow, which costs a
server ~50 MB of resident memory once imported; their modules are imported on the first
upload that needs them, so a server that never sees a table never pays for it.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from nimbus.datasets.domain import Format
from nimbus.datasets.formats import idx, image_folder, npz, text_jsonl
from nimbus.datasets.formats.base import RawDataset, ReadContext, Reader


def _imported_on_first_use(module: str) -> Reader:
    """The ``read`` function of ``nimbus.datasets.formats.<module>``, imported when called."""

    def read(source: Path, ctx: ReadContext) -> RawDataset:
        reader: Reader = import_module(f"{__name__}.{module}").read
        return reader(source, ctx)

    read.__qualname__ = read.__name__ = f"{module}.read"
    return read


READERS: dict[Format, Reader] = {
    Format.IMAGE_FOLDER: image_folder.read,
    Format.IDX: idx.read,
    Format.NPZ: npz.read,
    Format.TEXT_CSV: _imported_on_first_use("text_csv"),
    Format.TEXT_JSONL: text_jsonl.read,
    Format.TABULAR_CSV: _imported_on_first_use("tabular_csv"),
    Format.PARQUET: _imported_on_first_use("parquet"),
}

__all__ = ["READERS", "RawDataset", "ReadContext", "Reader"]
