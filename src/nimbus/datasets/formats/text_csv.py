"""text-csv: a CSV with a header row and columns ``text`` and ``label`` (others ignored but
the group column, when the upload names one)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext, to_fixed_unicode
from nimbus.datasets.formats.tabular import (
    column_groups,
    column_labels,
    read_csv_table,
    require_columns,
)


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Texts as a fixed-width unicode array; labels from ``options.label`` or ``label``."""
    label = ctx.options.label or "label"
    table = read_csv_table(source, ctx, {"text": pa.string()})
    require_columns(table, ["text", label], ctx)
    groups = column_groups(table, ctx)
    texts = to_fixed_unicode(table["text"].to_pylist(), ctx)
    labels = column_labels(table[label], label, ctx)
    schema = {"dtype": "str", "max_length": texts.dtype.itemsize // 4, "label": label}
    return RawDataset(Task.TEXT, [texts], labels, schema, groups=groups)
