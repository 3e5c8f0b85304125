"""idx: MNIST IDX files in archives, gzipped or not, with and without t10k."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from nimbus.datasets.domain import Format, IngestLimits, Task
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build


def mnist(n: int, seed: int, size: tuple[int, int] = (7, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *size), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    return images, labels


def test_gzipped_idx_in_a_tar_with_t10k_as_given_test(build: Build) -> None:
    train_x, train_y = mnist(200, seed=1)
    test_x, test_y = mnist(50, seed=2)
    members = {
        "mnist/train-images-idx3-ubyte.gz": build.gz(build.idx(train_x)),
        "mnist/train-labels-idx1-ubyte.gz": build.gz(build.idx(train_y)),
        "mnist/t10k-images-idx3-ubyte.gz": build.gz(build.idx(test_x)),
        "mnist/t10k-labels-idx1-ubyte.gz": build.gz(build.idx(test_y)),
        "mnist/README.md": b"the MNIST database",
    }
    prepared = build.run(build.tar("mnist.tar", members))
    assert prepared.format is Format.IDX and prepared.task is Task.IMAGE
    assert prepared.classes == [str(d) for d in range(10)]
    assert prepared.split_source == "given"
    assert prepared.schema == {"shape": [7, 5, 1], "dtype": "uint8"}
    sizes = {name: split.size for name, split in prepared.splits.items()}
    assert sizes == {"train": 180, "val": 20, "test": 50}
    assert prepared.splits["val"].per_class == {str(d): 2 for d in range(10)}
    test_images = build.load(prepared, "test_x.npy")
    assert test_images.shape == (50, 7, 5, 1) and test_images.dtype == np.uint8
    assert np.array_equal(test_images[..., 0], test_x)  # the given test split keeps its order
    assert np.array_equal(build.load(prepared, "test_y.npy"), test_y.astype(np.int64))
    train = np.concatenate([build.load(prepared, "train_x.npy"), build.load(prepared, "val_x.npy")])
    assert int(train.sum(dtype=np.int64)) == int(train_x.sum(dtype=np.int64))
    assert 100 < prepared.stats["pixel_mean"][0] < 155


def test_plain_idx_in_a_zip_gets_a_seeded_split(build: Build) -> None:
    images, labels = mnist(100, seed=3)
    members = {
        "train-images.idx3-ubyte": build.idx(images),
        "train-labels.idx1-ubyte": build.idx(labels),
    }
    prepared = build.run(build.zip("digits.zip", members), seed=5)
    assert prepared.split_source == "seeded"
    assert {n: s.size for n, s in prepared.splits.items()} == {"train": 80, "val": 10, "test": 10}
    y = build.load(prepared, "test_y.npy")
    x = build.load(prepared, "test_x.npy")
    # Each test row is still paired with its own label.
    for row, label in zip(x, y, strict=True):
        matches = np.flatnonzero((images == row[..., 0]).all(axis=(1, 2)))
        assert labels[matches[0]] == label


def test_plain_idx_in_a_tar_is_read_in_place(build: Build) -> None:
    images, labels = mnist(64, seed=9, size=(4, 4))
    members = {
        "digits/train-labels-idx1-ubyte": build.idx(labels),  # labels first: order is free
        "digits/train-images-idx3-ubyte": build.idx(images),
    }
    prepared = build.run(build.tar("digits.tar", members), val_fraction=0.0, test_fraction=0.0)
    assert prepared.splits["train"].size == 64
    assert np.array_equal(build.load(prepared, "train_x.npy")[..., 0], images)
    assert np.array_equal(build.load(prepared, "train_y.npy"), labels)


def test_prefixed_test_files_are_the_test_split(build: Build) -> None:
    members = {}
    for split, n in (("train", 30), ("test", 10)):
        images, labels = mnist(n, seed=n)
        members[f"emnist-digits-{split}-images-idx3-ubyte"] = build.idx(images)
        members[f"emnist-digits-{split}-labels-idx1-ubyte"] = build.idx(labels)
    prepared = build.run(build.zip("emnist.zip", members))
    assert prepared.split_source == "given" and prepared.splits["test"].size == 10


def test_wrong_magic_is_named(build: Build) -> None:
    images, labels = mnist(10, seed=4)
    members = {
        "train-images-idx3-ubyte": build.idx(images, magic=0x00000903),
        "train-labels-idx1-ubyte": build.idx(labels),
    }
    with pytest.raises(
        InvalidDataset, match=r"'train-images-idx3-ubyte' has IDX magic.*0x00000903"
    ):
        build.run(build.tar("bad.tar", members))


def test_count_mismatch_names_both_members(build: Build) -> None:
    images, labels = mnist(10, seed=5)
    members = {
        "train-images-idx3-ubyte.gz": build.gz(build.idx(images)),
        "train-labels-idx1-ubyte.gz": build.gz(build.idx(labels[:9])),
    }
    pattern = r"'train-images-idx3-ubyte\.gz' has 10 images but 'train-labels-idx1-ubyte\.gz'"
    with pytest.raises(InvalidDataset, match=pattern):
        build.run(build.tar("bad.tar", members))


def test_truncated_idx_data_is_named(build: Build) -> None:
    images, labels = mnist(10, seed=6)
    members = {
        "train-images-idx3-ubyte": build.idx(images)[:-7],
        "train-labels-idx1-ubyte": build.idx(labels),
    }
    with pytest.raises(InvalidDataset, match=r"'train-images-idx3-ubyte' is truncated"):
        build.run(build.tar("bad.tar", members))


def test_missing_labels_file_is_named(build: Build) -> None:
    images, _ = mnist(10, seed=7)
    members = {"train-images-idx3-ubyte": build.idx(images)}
    with pytest.raises(InvalidDataset, match=r"'train-images-idx3-ubyte' has no matching labels"):
        build.run(build.tar("bad.tar", members))


def test_corrupt_gzip_member_is_named(build: Build) -> None:
    images, labels = mnist(10, seed=8)
    broken = build.gz(build.idx(images))[:-12]
    members = {
        "train-images-idx3-ubyte.gz": broken,
        "train-labels-idx1-ubyte.gz": build.gz(build.idx(labels)),
    }
    with pytest.raises(InvalidDataset, match=r"'train-images-idx3-ubyte\.gz' is not valid gzip"):
        build.run(build.tar("bad.tar", members))


def test_gzip_bomb_member_hits_the_byte_limit(build: Build) -> None:
    images = np.zeros((2000, 28, 28), dtype=np.uint8)
    members = {
        "train-images-idx3-ubyte.gz": build.gz(build.idx(images)),
        "train-labels-idx1-ubyte.gz": build.gz(build.idx(np.zeros(2000, dtype=np.uint8))),
    }
    limits = IngestLimits(max_unpacked_bytes=500_000)
    with pytest.raises(InvalidDataset, match=r"'train-images-idx3-ubyte\.gz' unpacks past"):
        build.run(build.tar("bomb.tar", members), limits=limits)


def test_archive_without_idx_files(build: Build) -> None:
    with pytest.raises(InvalidDataset, match="holds no IDX files"):
        build.run(build.tar("x.tar", {"readme.txt": b"hi"}), format="idx")
