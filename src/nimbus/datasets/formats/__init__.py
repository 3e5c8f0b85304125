"""One module per input format; :data:`READERS` is the one place a format picks its reader."""

from __future__ import annotations

from nimbus.datasets.formats import (
    idx,
    image_folder,
    npz,
    parquet,
    tabular_csv,
    text_csv,
    text_jsonl,
)
from nimbus.datasets.formats.base import RawDataset, ReadContext, Reader
from nimbus.datasets.model import Format

READERS: dict[Format, Reader] = {
    Format.IMAGE_FOLDER: image_folder.read,
    Format.IDX: idx.read,
    Format.NPZ: npz.read,
    Format.TEXT_CSV: text_csv.read,
    Format.TEXT_JSONL: text_jsonl.read,
    Format.TABULAR_CSV: tabular_csv.read,
    Format.PARQUET: parquet.read,
}

__all__ = ["READERS", "RawDataset", "ReadContext", "Reader"]
