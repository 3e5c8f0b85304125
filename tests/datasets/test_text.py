"""text-csv and text-jsonl: texts as fixed-width unicode arrays."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest

from nimbus.datasets.domain import Format, Task
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build


def test_text_csv(build: Build) -> None:
    rows = ["text,label"]
    for i in range(20):
        rows.append(f'"review {i}, with a comma\nand a newline",{"pos" if i % 2 else "neg"}')
    prepared = build.run(build.file("reviews.csv", "\n".join(rows) + "\n"))
    assert prepared.format is Format.TEXT_CSV and prepared.task is Task.TEXT
    assert prepared.classes == ["neg", "pos"]
    assert {n: s.size for n, s in prepared.splits.items()} == {"train": 16, "val": 2, "test": 2}
    x = build.load(prepared, "train_x.npy")
    assert x.dtype.kind == "U" and x.shape == (16,)
    assert all(text.startswith("review ") and "\n" in text for text in x.tolist())
    assert prepared.stats["length_max"] == len("review 19, with a comma\nand a newline")


def test_text_jsonl_with_integer_labels(build: Build) -> None:
    lines = [json.dumps({"text": "é" * (i + 1), "label": i % 3}) for i in range(30)]
    prepared = build.run(build.file("data.jsonl", "\n".join(lines) + "\n\n"))
    assert prepared.format is Format.TEXT_JSONL
    assert prepared.classes == ["0", "1", "2"]
    x = np.concatenate([build.load(prepared, f"{s}_x.npy") for s in ("train", "val", "test")])
    assert x.dtype == np.dtype("<U30")
    assert sorted(len(t) for t in x.tolist()) == list(range(1, 31))


def test_jsonl_bad_line_is_named(build: Build) -> None:
    lines = [json.dumps({"text": "a", "label": 1}), '{"text": "b"', json.dumps({"text": "c"})]
    with pytest.raises(InvalidDataset, match=r"'data\.jsonl' line 2 is not valid JSON"):
        build.run(build.file("data.jsonl", "\n".join(lines)))


def test_jsonl_missing_label_is_named(build: Build) -> None:
    lines = [json.dumps({"text": "a", "label": 1}), json.dumps({"text": "c"})]
    with pytest.raises(InvalidDataset, match="line 2 has no 'label'"):
        build.run(build.file("data.jsonl", "\n".join(lines)))


def test_text_csv_without_label_column(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="has no 'label' column"):
        build.run(build.file("t.csv", "text,category\nhello,a\nbye,b\n"))
