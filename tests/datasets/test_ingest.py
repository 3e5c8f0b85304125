"""The whole pipeline: detection, refusals common to every format, files and determinism."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nimbus.datasets.detect import detect_format
from nimbus.datasets.domain import SPLITS, Format, IngestLimits, IngestOptions, Task
from nimbus.errors import InvalidDataset, InvalidInput

if TYPE_CHECKING:
    from tests.datasets.conftest import Build


def image_zip(build: Build, name: str = "pets.zip", n: int = 10) -> Path:
    members = {f"{c}/{i}.png": build.png(4, 4, seed=i) for c in ("a", "b") for i in range(n)}
    return build.zip(name, members)


def detect(source: Path, filename: str | None = None, **options: object) -> Format:
    name = source.name if filename is None else filename
    return detect_format(source, name, IngestOptions(**options), IngestLimits())  # type: ignore[arg-type]


def test_detects_each_format(build: Build) -> None:
    assert detect(image_zip(build)) is Format.IMAGE_FOLDER
    idx = build.tar("d.tgz", {"d/train-labels-idx1-ubyte.gz": b"", "d/x": b""}, gz=True)
    assert detect(idx, "") is Format.IDX
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((2, 2)), y=np.zeros(2))
    assert detect(build.file("a.bin", npz.getvalue()), "") is Format.NPZ
    assert detect(build.file("t.csv", "text,label\nhi,a\n")) is Format.TEXT_CSV
    assert detect(build.file("f.csv", "a,b,label\n1,2,0\n")) is Format.TABULAR_CSV
    assert detect(build.file("f2.csv", "text,label\n1,0\n"), task="tabular-classification") is (
        Format.TABULAR_CSV
    )
    assert detect(build.file("noext", '{"text": "x", "label": 1}\n'), "") is Format.TEXT_JSONL
    pq.write_table(pa.table({"a": [1], "label": [0]}), build.root / "p")
    assert detect(build.root / "p", "") is Format.PARQUET
    assert detect(build.file("any", "x"), format="npz") is Format.NPZ


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x01\x02binary", "cannot tell the format"),
        (b"", "cannot tell the format"),
        (b"\x93NUMPY\x01\x00", "bare .npy"),
    ],
)
def test_unknown_formats_are_refused(build: Build, data: bytes, reason: str) -> None:
    with pytest.raises(InvalidDataset, match=reason):
        build.run(build.file("upload.bin", data))


def test_archive_of_unknown_content_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match=r"cannot tell the format of archive 'docs\.zip'"):
        build.run(build.zip("docs.zip", {"readme.txt": b"hi"}))


def test_single_class_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="single class 'spam'"):
        build.run(build.file("one.csv", "text,label\na,spam\nb,spam\n"))


@pytest.mark.parametrize(
    ("name", "data"),
    [("empty.csv", "text,label\n"), ("empty.jsonl", "\n\n"), ("empty2.csv", "a,label\n")],
)
def test_empty_data_is_refused(build: Build, name: str, data: str) -> None:
    with pytest.raises(InvalidDataset, match="holds no examples"):
        build.run(build.file(name, data), format="text-jsonl" if name.endswith("jsonl") else None)


def test_task_mismatch_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="holds image-classification data"):
        build.run(image_zip(build), task="text-classification")


def test_bad_fractions_are_a_400(build: Build) -> None:
    with pytest.raises(InvalidInput, match="below 1"):
        build.run(image_zip(build), val_fraction=0.6, test_fraction=0.5)


def test_files_are_plain_npy_in_the_workdir_and_scratch_is_gone(build: Build) -> None:
    prepared = build.run(image_zip(build), filename="")
    workdir = prepared.files["train_x.npy"].parent
    assert sorted(os.listdir(build.root)) == ["pets.zip", workdir.name]
    assert sorted(os.listdir(workdir)) == sorted(f"{s}_{k}.npy" for s in SPLITS for k in "xy")
    for name, path in prepared.files.items():
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        assert array.dtype == (np.int64 if name.endswith("_y.npy") else np.uint8)
    info = prepared.info()
    assert json.loads(json.dumps(info)) == info
    assert info["num_classes"] == 2 and info["schema"]["shape"] == [4, 4, 1]


def test_same_seed_same_files_other_seed_other_split(build: Build) -> None:
    source = image_zip(build, n=30)
    first, again, other = build.run(source), build.run(source), build.run(source, seed=1)
    for name in first.files:
        assert first.files[name].read_bytes() == again.files[name].read_bytes()
    assert first.files["test_x.npy"].read_bytes() != other.files["test_x.npy"].read_bytes()
    assert first.task is Task.IMAGE


def test_table_formats_load_pyarrow_only_when_used() -> None:
    """pyarrow costs a server ~50 MB resident: only table uploads import it."""
    code = (
        "import sys, nimbus.datasets.ingest, nimbus.services.datasets, nimbus.api.app\n"
        "assert 'pyarrow' not in sys.modules, 'imported at start'\n"
        "from nimbus.datasets.formats import READERS\n"
        "from nimbus.datasets.domain import Format\n"
        "assert READERS[Format.PARQUET].__name__ == 'parquet.read'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_image_options_change_the_content_hash_only_when_given() -> None:
    """Uploads made without image options keep the options (and so the hashes) they had."""
    assert "image_size" not in IngestOptions().canonical()
    sized = IngestOptions(image_size=(32, 24), image_fit="pad").canonical()
    assert sized["image_size"] == [32, 24] and sized["image_fit"] == "pad"
