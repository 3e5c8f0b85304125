"""parquet: a Parquet file with feature columns and a label column."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.formats.tabular import tabular_from_table
from nimbus.errors import InvalidDataset


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Features from every column but the label (``options.label``, default ``label``)."""
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise InvalidDataset(f"{ctx.display!r} is not a readable Parquet file ({exc})") from exc
    return tabular_from_table(table, ctx)
