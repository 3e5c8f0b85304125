"""tabular-csv: a CSV with a header row, feature columns and a label column."""

from __future__ import annotations

from pathlib import Path

from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.formats.tabular import read_csv_table, tabular_from_table


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Features from every column but the label (``options.label``, default ``label``)."""
    return tabular_from_table(read_csv_table(source, ctx), ctx)
