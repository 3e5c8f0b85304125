"""A sensitive attribute's column (``group_column``): kept out of the features, each
example's group written beside its label in every split, counted per split; refused where it
cannot be (no such column, a missing value, image data)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from nimbus.datasets.domain import IngestOptions
from nimbus.errors import InvalidDataset
from nimbus.runtime.data import DataSplits

if TYPE_CHECKING:
    from tests.datasets.conftest import Build

SPLITS = ("train", "val", "test")


def people(rows: int = 60) -> str:
    lines = ["age,region,score,label"]
    for i in range(rows):
        lines.append(f"{20 + i},{['north', 'south', 'west'][i % 3]},{i / 4},{i % 2}")
    return "\n".join(lines)


def test_a_tables_group_column_is_kept_apart_and_split_with_its_rows(build: Build) -> None:
    source = build.file("people.csv", people())
    plain = build.run(source)
    prepared = build.run(source, group_column="region")
    assert plain.schema["features"] == ["age", "region", "score"]
    assert prepared.schema["features"] == ["age", "score"]  # not a feature
    assert prepared.schema["groups"] == {"column": "region", "values": ["north", "south", "west"]}
    counts = prepared.stats["groups"]
    assert sum(sum(c.values()) for c in counts.values()) == 60
    for split in SPLITS:
        x = build.load(prepared, f"{split}_x.npy")
        g = build.load(prepared, f"{split}_g.npy")
        assert len(g) == len(x) and g.dtype == np.int64
        # age = 20 + i and region = i % 3: each row's group follows it into its split.
        assert np.array_equal(g, ((x[:, 0] - 20).astype(int)) % 3)
        assert counts[split] == {
            name: int((g == i).sum()) for i, name in enumerate(["north", "south", "west"])
        }
    assert IngestOptions(group_column="region").canonical() != IngestOptions().canonical()
    assert "group_column" not in IngestOptions().canonical()  # old hashes stay


def test_the_runtime_reads_the_test_splits_groups(build: Build) -> None:
    prepared = build.run(build.file("people.csv", people()), group_column="region")
    directory = next(iter(prepared.files.values())).parent
    data = DataSplits.load(
        directory,
        prepared.task,
        prepared.classes,
        prepared.schema["features"],
        groups=prepared.schema["groups"],
    )
    assert data.groups is not None and data.groups.column == "region"
    assert np.array_equal(data.groups.test, build.load(prepared, "test_g.npy"))
    assert DataSplits.load(directory, prepared.task, prepared.classes).groups is None


def test_text_groups_from_csv_and_json_lines(build: Build) -> None:
    csv = ["text,label,lang"] + [f"words {i},{i % 2},{['en', 'fr'][i % 2]}" for i in range(30)]
    prepared = build.run(build.file("t.csv", "\n".join(csv)), group_column="lang")
    assert prepared.schema["groups"]["values"] == ["en", "fr"]
    lines = [json.dumps({"text": f"w {i}", "label": i % 2, "lang": i % 3}) for i in range(30)]
    prepared = build.run(build.file("t.jsonl", "\n".join(lines)), group_column="lang")
    assert prepared.schema["groups"]["values"] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("p.csv", people(), "has no 'sex' column"),
        ("p.csv", people().replace(",north,", ",,", 1), "row 1 has no value in 'sex'"),
        ("t.jsonl", '{"text": "a", "label": 1}\n', "line 1 has no 'sex'"),
    ],
)
def test_a_bad_group_column_is_refused_naming_it(
    build: Build, name: str, data: str, message: str
) -> None:
    text = data.replace("region", "sex") if "row 1" in message else data
    with pytest.raises(InvalidDataset, match=message):
        build.run(build.file(name, text), group_column="sex")


def test_an_image_folders_groups_come_from_its_groups_file(build: Build) -> None:
    images = {f"pets/{c}/{i}.png": build.png(seed=i) for c in "ab" for i in range(6)}
    rows = "path,site\n" + "".join(
        f"{c}/{i}.png,{'x' if i % 2 else 'y'}\n" for c in "ab" for i in range(6)
    )
    archive = build.zip("photos.zip", {**images, "pets/groups.csv": rows.encode()})
    prepared = build.run(archive, group_column="site")
    assert prepared.schema["groups"] == {"column": "site", "values": ["x", "y"]}
    assert sum(sum(c.values()) for c in prepared.stats["groups"].values()) == 12
    # Without the group column, the file is no image: refused as before.
    with pytest.raises(InvalidDataset, match="is not a PNG or JPEG image"):
        build.run(archive)
    # Every image needs its row; the file must be there.
    short_rows = rows.removesuffix("b/5.png,x\n").encode()
    short = build.zip("short.zip", {**images, "pets/groups.csv": short_rows})
    with pytest.raises(InvalidDataset, match=r"groups\.csv has no row for image 'pets/b/5\.png'"):
        build.run(short, group_column="site")
    with pytest.raises(InvalidDataset, match=r"has no groups\.csv"):
        build.run(build.zip("none.zip", images), group_column="site")
    with pytest.raises(InvalidDataset, match="needs a header row with 'path' and 'sex'"):
        build.run(archive, group_column="sex")


def test_other_image_data_takes_no_group_column(build: Build) -> None:
    x = np.zeros((20, 4, 4), dtype=np.uint8)
    source = build.root / "d.npz"
    np.savez(source, x=x, y=np.arange(20) % 2)
    with pytest.raises(InvalidDataset, match="without groups: a group column is a column of"):
        build.run(source, group_column="sex")
