"""Choosing and reading a few examples of a prepared version (services.dataset_samples)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidDataset
from nimbus.services.dataset_samples import SampleCache, Samples, build, pick, read_head


def chunks_of(array: np.ndarray, size: int, pulled: list[int]) -> Iterator[bytes]:
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    for start in range(0, len(data), size):
        pulled.append(start)
        yield data[start : start + size]


def test_pick_takes_a_few_of_each_class_in_turn() -> None:
    labels = np.array([2, 2, 2, 2, 0, 1, 2, 0])
    assert pick(labels, limit=3) == [4, 5, 0]  # one of each class first, by class
    assert pick(labels, limit=5) == [4, 7, 5, 0, 1]
    assert pick(labels, limit=100) == [4, 7, 5, 0, 1, 2, 3, 6]
    assert pick(np.array([], dtype=np.int64)) == []


def test_read_head_reads_only_the_rows_asked_for() -> None:
    images = np.arange(1000 * 4 * 4 * 3, dtype=np.uint64).astype(np.uint8).reshape(1000, 4, 4, 3)
    pulled: list[int] = []
    head = read_head(chunks_of(images, 64, pulled), max_rows=10, max_bytes=10**6)
    assert head.shape == (10, 4, 4, 3) and np.array_equal(head, images[:10])
    assert len(pulled) == 10  # 128 header bytes and 480 of data, of 48,128
    # The byte budget caps the rows too (at least one row is always read).
    assert len(read_head(chunks_of(images, 4096, []), 1000, max_bytes=48 * 5)) == 5
    assert len(read_head(chunks_of(images, 4096, []), 1000, max_bytes=1)) == 1
    texts = np.array(["a", "bcd", "ef"])
    assert read_head(chunks_of(texts, 7, []), 10, 10**6).tolist() == ["a", "bcd", "ef"]


@pytest.mark.parametrize(
    "bad",
    [np.asfortranarray(np.zeros((3, 4), np.float32)), np.array([{"x": 1}], dtype=object)],
)
def test_read_head_refuses_what_it_cannot_slice(bad: np.ndarray) -> None:
    with pytest.raises(InvalidDataset):
        read_head(chunks_of(bad, 1024, []), 10, 10**6)
    with pytest.raises(InvalidDataset, match="cannot be read"):
        read_head(iter([b"not an npy file at all"]), 10, 10**6)


def test_build_makes_pngs_texts_and_rows() -> None:
    labels = np.array([1, 0, 1, 0])
    gray = np.full((4, 5, 7, 1), 200, np.uint8)
    images = build("train", Task.IMAGE, ["cat", "dog"], {}, labels, gray)
    assert [s.label for s in images.items] == ["cat", "cat", "dog", "dog"]
    assert [s.index for s in images.items] == [1, 3, 0, 2]
    png = images.items[0].png
    assert png is not None and Image.open(io.BytesIO(png)).size == (7, 5)
    long = np.array(["x" * 1000] * 4)
    texts = build("train", Task.TEXT, ["a", "b"], {}, labels, long)
    assert all(s.text is not None and len(s.text) == 300 for s in texts.items)
    table = np.arange(4 * 20, dtype=np.float32).reshape(4, 20)
    table[0, 0] = np.nan
    rows = build(
        "val", Task.TABULAR, ["a", "b"], {"features": [f"c{i}" for i in range(20)]}, labels, table
    )
    assert rows.columns[:2] == ("c0", "c1") and rows.hidden_columns == 20 - len(rows.columns)
    first = next(s for s in rows.items if s.index == 0)
    assert first.values[0] is None and first.values[1] == 1.0


def test_the_cache_keeps_the_latest_few() -> None:
    cache = SampleCache(size=2)
    made = [Samples("train", Task.TEXT, ()) for _ in range(3)]
    for key, samples in zip("abc", made, strict=True):
        cache.put(key, samples)
        cache.get("a")  # kept fresh
    assert cache.get("a") is made[0] and cache.get("b") is None and cache.get("c") is made[2]
