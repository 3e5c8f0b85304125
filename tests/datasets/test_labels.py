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
