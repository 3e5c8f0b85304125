"""tabular-csv and parquet: float32 features, ordinal-encoded strings, NaN kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nimbus.datasets.domain import Format, Task
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build

SPLITS = ("train", "val", "test")


def test_tabular_csv_with_categories_and_missing_values(build: Build) -> None:
    rows = ["age,city,score,label"]
    for i in range(40):
        age = "" if i % 10 == 0 else str(20 + i)
        rows.append(f"{age},{['paris', 'oslo', 'lima'][i % 3]},{i / 4},{i % 2}")
    prepared = build.run(build.file("people.csv", "\n".join(rows)))
    assert prepared.format is Format.TABULAR_CSV and prepared.task is Task.TABULAR
    assert prepared.classes == ["0", "1"]
    assert prepared.schema["features"] == ["age", "city", "score"]
    assert prepared.schema["categories"] == {"city": ["lima", "oslo", "paris"]}
    assert prepared.schema["shape"] == [3] and prepared.schema["dtype"] == "float32"
    x = np.concatenate([build.load(prepared, f"{s}_x.npy") for s in SPLITS])
    assert x.dtype == np.float32 and x.shape == (40, 3)
    assert int(np.isnan(x[:, 0]).sum()) == 4
    assert sorted(set(x[:, 1].tolist())) == [0.0, 1.0, 2.0]
    assert prepared.stats["missing"] == {"age": 4, "city": 0, "score": 0}
    assert prepared.stats["missing_total"] == 4
    assert set(prepared.stats["feature_mean"]) == {"age", "city", "score"}


def test_parquet_with_a_named_label_column(build: Build) -> None:
    table = pa.table(
        {
            "f1": pa.array(np.arange(30, dtype=np.float64)),
            "flag": pa.array([i % 3 == 0 for i in range(30)]),
            "kind": pa.array(["x", None, "y"] * 10),
            "target": pa.array(["cat", "dog"] * 15),
        }
    )
    source = build.root / "data.parquet"
    pq.write_table(table, source)
    prepared = build.run(source, label="target")
    assert prepared.format is Format.PARQUET
    assert prepared.classes == ["cat", "dog"]
    assert prepared.schema["features"] == ["f1", "flag", "kind"]
    assert prepared.schema["label"] == "target"
    x = np.concatenate([build.load(prepared, f"{s}_x.npy") for s in SPLITS])
    assert x.shape == (30, 3) and int(np.isnan(x[:, 2]).sum()) == 10
    assert prepared.stats["missing"]["kind"] == 10


def test_csv_without_label_column_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match=r"'nolabel\.csv' has no 'label' column"):
        build.run(build.file("nolabel.csv", "a,b\n1,2\n3,4\n"))


def test_unsupported_column_type_is_named(build: Build) -> None:
    table = pa.table({"tags": pa.array([[1], [2], [3], [4]]), "label": [0, 1, 0, 1]})
    source = build.root / "nested.parquet"
    pq.write_table(table, source)
    with pytest.raises(InvalidDataset, match="column 'tags' has unsupported type"):
        build.run(source)


def test_missing_label_is_named(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="row 2 has no value in 'label'"):
        build.run(build.file("gap.csv", "a,label\n1,0\n2,\n3,1\n"))
