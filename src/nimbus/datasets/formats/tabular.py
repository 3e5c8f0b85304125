"""Shared by the table formats (tabular-csv, parquet, text-csv): Arrow tables to arrays.

Numeric and boolean columns become float32 (nulls stay NaN); string columns are
ordinal-encoded against their sorted distinct values, which the schema records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.errors import InvalidDataset

MAX_CATEGORIES = 10_000  # a column with more distinct strings is an ID or free text
_ARROW_ERRORS = (pa.ArrowException, ValueError, OSError)


def read_csv_table(
    source: Path, ctx: ReadContext, column_types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    """Parse a UTF-8 CSV with a header row (quoted newlines allowed) into an Arrow table."""
    try:
        return pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=column_types or {}),
        )
    except _ARROW_ERRORS as exc:
        raise InvalidDataset(f"{ctx.display!r} is not a valid CSV file ({exc})") from exc


def require_columns(table: pa.Table, wanted: list[str], ctx: ReadContext) -> None:
    """Refuse duplicate column names and missing required columns, naming them."""
    names = table.column_names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidDataset(f"{ctx.display!r} has duplicate columns {duplicates}")
    missing = [name for name in wanted if name not in names]
    if missing:
        shown = ", ".join(repr(n) for n in missing)
        raise InvalidDataset(f"{ctx.display!r} has no {shown} column; its columns are {names[:20]}")


def column_labels(column: pa.ChunkedArray, name: str, ctx: ReadContext) -> np.ndarray:
    """A label column as a numpy array of ints, floats, bools or strings; no missing labels."""
    if len(column) == 0:
        return np.zeros(0, dtype=np.int64)  # "no examples" is said once, by the pipeline
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidDataset(f"{ctx.display!r}: row {first + 1} has no value in {name!r}")
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(pa.string()), pa.string()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return np.asarray(column.to_numpy())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_numpy(), dtype=str)
    raise InvalidDataset(f"{ctx.display!r}: label column {name!r} has unsupported type {kind}")


def column_groups(table: pa.Table, ctx: ReadContext) -> np.ndarray | None:
    """The values of the upload's group column (``options.group_column``) as strings, one
    per row; None when none was named. Every row needs one."""
    name = ctx.options.group_column
    if name is None:
        return None
    require_columns(table, [name], ctx)
    values = table[name].to_pylist()
    empty = next((i for i, v in enumerate(values) if v is None or str(v).strip() == ""), None)
    if empty is not None:  # an empty CSV field is a missing value here, not a group
        raise InvalidDataset(f"{ctx.display!r}: row {empty + 1} has no value in {name!r}")
    return np.asarray([str(v) for v in values], dtype=str)


def tabular_from_table(table: pa.Table, ctx: ReadContext) -> RawDataset:
    """Every column but the label (and the group column, if named) becomes a float32
    feature."""
    label = ctx.options.label or "label"
    require_columns(table, [label], ctx)
    groups = column_groups(table, ctx)
    apart = {label, ctx.options.group_column}
    features = [name for name in table.column_names if name not in apart]
    if not features:
        raise InvalidDataset(f"{ctx.display!r} has no feature columns besides {label!r}")
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    categories: dict[str, list[str]] = {}
    for j, name in enumerate(features):
        x[:, j], cats = _feature(table[name], name, ctx)
        if cats is not None:
            categories[name] = cats
    schema: dict[str, Any] = {
        "shape": [len(features)],
        "dtype": "float32",
        "features": features,
        "label": label,
        "categories": categories,
    }
    labels = column_labels(table[label], label, ctx)
    return RawDataset(Task.TABULAR, [x], labels, schema, groups=groups)


def _feature(
    column: pa.ChunkedArray, name: str, ctx: ReadContext
) -> tuple[np.ndarray, list[str] | None]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(pa.string()), pa.string()
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    if pa.types.is_null(kind) or any(test(kind) for test in numeric):
        return column.cast(pa.float64()).to_numpy(), None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        distinct = pc.unique(column).drop_null()
        if len(distinct) > MAX_CATEGORIES:
            raise InvalidDataset(
                f"{ctx.display!r}: column {name!r} has {len(distinct)} distinct strings, over "
                f"{MAX_CATEGORIES}; drop it or upload the data as text"
            )
        cats = sorted(distinct.to_pylist())
        codes = pc.index_in(column, value_set=pa.array(cats, type=kind))
        return codes.cast(pa.float64()).to_numpy(), cats
    raise InvalidDataset(f"{ctx.display!r}: column {name!r} has unsupported type {kind}")
