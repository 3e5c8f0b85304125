"""Raw labels to sorted class names and int64 indices."""

from __future__ import annotations

import numpy as np
import pytest

from nimbus.datasets.labels import encode_labels
from nimbus.errors import InvalidDataset


def test_integer_labels_sort_numerically() -> None:
    classes, y = encode_labels(np.array([10, 2, 2, 33]), "d")
    assert classes == ["2", "10", "33"]
    assert y.tolist() == [1, 0, 0, 2]
    assert y.dtype == np.int64


def test_strings_that_spell_integers_sort_numerically() -> None:
    classes, y = encode_labels(np.array(["10", "9", "0"]), "d")
    assert classes == ["0", "9", "10"]
    assert y.tolist() == [2, 1, 0]


def test_other_strings_sort_as_text() -> None:
    classes, y = encode_labels(np.array(["dog", "cat", "01", "1"]), "d")
    assert classes == ["01", "1", "cat", "dog"]
    assert y.tolist() == [3, 2, 0, 1]


def test_integral_floats_are_integers() -> None:
    classes, _ = encode_labels(np.array([1.0, 0.0, 2.0]), "d")
    assert classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (np.array([0.0, 0.5]), "example 2 has label 0.5"),
        (np.array([1.0, np.nan]), "example 2"),
        (np.array(["a", ""]), "example 2 has an empty label"),
        (np.array([1 + 2j]), "integers or strings"),
    ],
)
def test_bad_labels_are_refused(labels: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidDataset, match=reason):
        encode_labels(labels, "data.csv")


def test_too_many_classes_are_refused() -> None:
    with pytest.raises(InvalidDataset, match="distinct labels"):
        encode_labels(np.arange(60_000), "ids.csv")


@pytest.mark.parametrize(
    "labels",
    [
        np.array([3, 0, 3, 7], dtype=np.uint8),  # counted (small, non-negative)
        np.arange(100_000, dtype=np.uint32)[::-1] % 40_000,
        np.array([0, 90_000, 90_000]),  # past the counting bound: sorted
        np.array([5, -1, 5, 2]),  # negative: sorted
        np.array([10**12, 3, 10**12]),  # far apart: sorted
        np.array([2**63 - 1, 0], dtype=np.int64),
    ],
)
def test_integer_labels_every_way_agree_with_unique(labels: np.ndarray) -> None:
    classes, y = encode_labels(labels, "d")
    uniques, inverse = np.unique(labels, return_inverse=True)
    assert classes == [str(int(u)) for u in uniques]
    assert y.dtype == np.int64 and np.array_equal(y, inverse.reshape(-1))
