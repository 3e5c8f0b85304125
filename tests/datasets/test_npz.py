"""npz: arrays x and y, the task decided by what x holds."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from nimbus.datasets.domain import Format, Task
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build


def npz(build: Build, name: str, compressed: bool = False, **arrays: Any) -> Path:
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return build.file(name, out.getvalue())


@pytest.mark.parametrize("shape", [(40, 6, 5), (40, 6, 5, 3)])
def test_image_arrays(build: Build, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    y = np.arange(40) % 4
    prepared = build.run(npz(build, "images.npz", compressed=True, x=x, y=y))
    assert prepared.format is Format.NPZ and prepared.task is Task.IMAGE
    channels = shape[3] if len(shape) == 4 else 1
    assert prepared.schema == {"shape": [6, 5, channels], "dtype": "uint8"}
    assert prepared.classes == ["0", "1", "2", "3"]
    train = build.load(prepared, "train_x.npy")
    assert train.shape == (32, 6, 5, channels) and train.dtype == np.uint8
    assert {n: s.size for n, s in prepared.splits.items()} == {"train": 32, "val": 4, "test": 4}


def test_tabular_arrays_with_string_labels(build: Build) -> None:
    x = np.random.default_rng(1).normal(size=(30, 4))
    y = np.array(["no", "yes", "maybe"] * 10)
    prepared = build.run(npz(build, "table.npz", x=x, y=y))
    assert prepared.task is Task.TABULAR
    assert prepared.classes == ["maybe", "no", "yes"]
    train = build.load(prepared, "train_x.npy")
    assert train.dtype == np.float32 and train.shape == (24, 4)
    assert prepared.schema["features"] == ["f0", "f1", "f2", "f3"]


def test_keras_style_train_and_test_arrays(build: Build) -> None:
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, (50, 4, 4), dtype=np.uint8)
    x_test = rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)
    mnist = npz(
        build,
        "mnist.npz",
        x_train=x_train,
        y_train=np.arange(50) % 2,
        x_test=x_test,
        y_test=np.arange(10) % 2,
    )
    prepared = build.run(mnist)
    assert prepared.split_source == "given"
    assert prepared.splits["test"].size == 10
    test = build.load(prepared, "test_x.npy")
    assert np.array_equal(test[..., 0], x_test)


def test_object_arrays_are_refused(build: Build) -> None:
    x = np.array([{"a": 1}, [2]] * 5, dtype=object)
    with pytest.raises(InvalidDataset, match="array 'x' holds Python objects"):
        build.run(npz(build, "evil.npz", x=x, y=np.arange(10) % 2))


def test_missing_y_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match=r"must hold arrays 'x' and 'y'.*'x'"):
        build.run(npz(build, "half.npz", x=np.zeros((4, 3))))


def test_length_mismatch_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="x has 4 rows but y has 3 labels"):
        build.run(npz(build, "bad.npz", x=np.zeros((4, 3)), y=np.arange(3)))


def test_fortran_ordered_x_is_read_too(build: Build) -> None:
    x = np.asfortranarray(np.arange(60, dtype=np.float64).reshape(20, 3))
    prepared = build.run(npz(build, "f.npz", x=x, y=np.arange(20) % 2))
    rows = np.concatenate([build.load(prepared, f"{s}_x.npy") for s in ("train", "val", "test")])
    assert sorted(rows[:, 0].tolist()) == list(range(0, 60, 3))


def test_2d_labels_are_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="array 'y' has shape"):
        build.run(npz(build, "bad.npz", x=np.zeros((4, 3)), y=np.zeros((4, 2))))


def test_unsupported_x_is_refused(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="expected uint8 images"):
        build.run(npz(build, "bad.npz", x=np.zeros((4, 3, 3), dtype=np.float64), y=np.arange(4)))
