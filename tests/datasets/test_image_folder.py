"""image-folder: class folders of PNG/JPEG in zip, tar and tar.gz."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from nimbus.datasets.domain import Format, IngestLimits, PreparedDataset, Task
from nimbus.datasets.formats.image_folder import resolve_layout
from nimbus.errors import InvalidDataset

if TYPE_CHECKING:
    from tests.datasets.conftest import Build

SPLITS = ("train", "val", "test")


def folder(build: Build, top: str = "", n: int = 10, mode: str = "L") -> dict[str, bytes]:
    members = {}
    for cls in ("cat", "dog"):
        for i in range(n):
            members[f"{top}{cls}/{i}.png"] = build.png(8, 6, mode, seed=i + 100 * ord(cls[0]))
    return members


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (empty) data never delivers."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def all_pixels(build: Build, prepared: PreparedDataset) -> np.ndarray:
    return np.concatenate([build.load(prepared, f"{s}_x.npy") for s in SPLITS])


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_grayscale_folder_under_a_top_folder(build: Build, kind: str) -> None:
    members = folder(build, top="pets/")
    members["__MACOSX/pets/cat/._0.png"] = b"apple double"
    members["pets/.DS_Store"] = b"finder"
    if kind == "zip":
        source = build.zip("pets.zip", members)
    else:
        source = build.tar(f"pets.{kind}", members, gz=kind == "tgz")
    prepared = build.run(source)
    assert prepared.format is Format.IMAGE_FOLDER
    assert prepared.task is Task.IMAGE
    assert prepared.classes == ["cat", "dog"]
    assert prepared.schema["shape"] == [6, 8, 1] and prepared.schema["dtype"] == "uint8"
    assert prepared.schema["transform"]["fit"] == "crop"
    assert prepared.split_source == "seeded"
    assert {s: prepared.splits[s].size for s in SPLITS} == {"train": 16, "val": 2, "test": 2}
    assert prepared.splits["test"].per_class == {"cat": 1, "dog": 1}
    x = build.load(prepared, "train_x.npy")
    assert x.shape == (16, 6, 8, 1) and x.dtype == np.uint8
    y = build.load(prepared, "train_y.npy")
    assert y.dtype == np.int64 and sorted(set(y.tolist())) == [0, 1]
    expected = sum(
        int(np.asarray(Image.open(io.BytesIO(data))).sum())
        for name, data in members.items()
        if name.startswith("pets/") and name.endswith(".png")
    )
    assert int(all_pixels(build, prepared).sum(dtype=np.int64)) == expected
    assert len(prepared.stats["pixel_mean"]) == 1


def test_a_directory_sent_as_tar_by_the_sdk(build: Build) -> None:
    root = build.root / "digits"
    for cls in ("3", "10", "9"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{i}.png").write_bytes(build.png(3, 3, seed=i))
    (root / ".DS_Store").write_bytes(b"finder")
    source = build.root / "digits.tar"
    with tarfile.open(source, "w") as tf:
        tf.add(root, arcname="./digits")  # directory entries, modes and a ./ prefix
    prepared = build.run(source)
    assert prepared.classes == ["3", "9", "10"]
    assert sum(split.size for split in prepared.splits.values()) == 12


def test_rgb_jpeg_images(build: Build) -> None:
    members = {
        f"{cls}/{i}.jpg": build.image(5, 4, "RGB", i, "JPEG")
        for cls in ("a", "b")
        for i in range(5)
    }
    prepared = build.run(build.tar("rgb.tgz", members, gz=True))
    assert prepared.schema["shape"] == [4, 5, 3]
    assert build.load(prepared, "train_x.npy").shape[1:] == (4, 5, 3)
    assert len(prepared.stats["pixel_std"]) == 3


def test_mixed_modes_become_rgb(build: Build) -> None:
    gray = build.png(4, 4, "L", seed=1)
    members = {"a/0.png": gray, "a/1.png": build.png(4, 4, "L", seed=2)}
    members |= {"b/0.png": build.png(4, 4, "RGB", seed=3), "b/1.png": gray}
    prepared = build.run(build.zip("mixed.zip", members), val_fraction=0.0, test_fraction=0.0)
    x = build.load(prepared, "train_x.npy")
    assert x.shape == (4, 4, 4, 3)
    expected = np.asarray(Image.open(io.BytesIO(gray)))
    assert np.array_equal(x[0], np.repeat(expected[:, :, None], 3, axis=2))


def test_train_and_test_folders_are_the_given_test_split(build: Build) -> None:
    members = folder(build, top="train/", n=10) | folder(build, top="test/", n=3)
    prepared = build.run(build.zip("digits.zip", members))
    assert prepared.split_source == "given"
    assert prepared.splits["test"].size == 6
    assert prepared.splits["test"].per_class == {"cat": 3, "dog": 3}
    assert prepared.splits["val"].size == 2 and prepared.splits["train"].size == 18


def test_non_image_member_is_named(build: Build) -> None:
    members = folder(build, n=2) | {"cat/notes.txt": b"hello"}
    with pytest.raises(InvalidDataset, match=r"'cat/notes\.txt' is not a PNG or JPEG"):
        build.run(build.zip("pets.zip", members))


def test_undecodable_png_is_named(build: Build) -> None:
    members = folder(build, n=2) | {"dog/broken.png": b"\x89PNG\r\n\x1a\nnot really"}
    with pytest.raises(InvalidDataset, match=r"'dog/broken\.png' cannot be decoded"):
        build.run(build.zip("pets.zip", members))


def test_gif_named_png_is_refused(build: Build) -> None:
    gif = io.BytesIO()
    Image.new("L", (8, 6)).save(gif, format="GIF")
    members = folder(build, n=2) | {"dog/fake.png": gif.getvalue()}
    with pytest.raises(InvalidDataset, match=r"'dog/fake\.png' cannot be decoded"):
        build.run(build.zip("pets.zip", members))


def test_pixel_limit_is_enforced(build: Build) -> None:
    members = folder(build, n=2)
    with pytest.raises(InvalidDataset, match=r"'cat/0\.png' has 8x6 pixels, over the limit of 40"):
        build.run(build.zip("pets.zip", members), limits=IngestLimits(max_image_pixels=40))


def test_decompression_bomb_header_is_refused(build: Build) -> None:
    members = folder(build, n=2) | {"dog/bomb.png": png_header_only(100_000, 100_000)}
    with pytest.raises(InvalidDataset, match=r"'dog/bomb\.png'"):
        build.run(build.zip("pets.zip", members))


def test_image_outside_a_class_folder_is_named(build: Build) -> None:
    with pytest.raises(InvalidDataset, match=r"'loose\.png' is not inside a class folder"):
        build.run(build.zip("flat.zip", {"loose.png": build.png()}))


def test_images_at_different_depths_are_refused(build: Build) -> None:
    members = {"a/0.png": build.png(), "x/b/1.png": build.png()}
    with pytest.raises(InvalidDataset, match="different folder depths"):
        build.run(build.zip("deep.zip", members))


def test_archive_without_images_is_refused(build: Build) -> None:
    source = build.zip("empty.zip", {"__MACOSX/._x": b"", "a/.hidden": b""})
    with pytest.raises(InvalidDataset, match="no PNG or JPEG images"):
        build.run(source, format="image-folder")


@pytest.mark.parametrize(
    ("folders", "classes", "test"),
    [
        ([["a"], ["b"]], ["a", "b"], None),
        ([["top", "a"], ["top", "b"]], ["a", "b"], None),
        ([["train", "a"], ["test", "a"]], ["a", "a"], [False, True]),
        ([["d", "train", "a"], ["d", "test", "b"]], ["a", "b"], [False, True]),
    ],
)
def test_resolve_layout(
    folders: list[list[str]], classes: list[str], test: list[bool] | None
) -> None:
    got_classes, mask = resolve_layout(folders, "x.zip")
    assert got_classes == classes
    assert (mask is None) if test is None else (mask is not None and mask.tolist() == test)


def test_resolve_layout_refuses_two_top_folders() -> None:
    with pytest.raises(InvalidDataset, match="found top folders"):
        resolve_layout([["x", "a"], ["y", "b"]], "x.zip")


def test_photos_of_different_sizes_and_modes_are_brought_to_one_size(build: Build) -> None:
    """The issue's own case: JPEGs of different sizes (and modes) in class folders."""
    members = {
        "photos/red/1.jpg": build.image(86, 46, "RGB", 1, "JPEG"),
        "photos/red/2.png": build.png(30, 40, "L", seed=2),
        "photos/blue/0.jpg": build.image(64, 68, "RGB", 3, "JPEG"),
        "photos/blue/1.png": build.png(50, 50, "L", seed=4),
    }
    rgba = io.BytesIO()
    Image.new("RGBA", (70, 20), (0, 0, 255, 128)).save(rgba, format="PNG")
    members["photos/blue/2.png"] = rgba.getvalue()
    prepared = build.run(build.zip("photos.zip", members), val_fraction=0.0, test_fraction=0.0)
    # median height of 46, 40, 68, 50, 20 and median width of 86, 30, 64, 50, 70
    assert prepared.schema["shape"] == [46, 64, 3]
    assert prepared.schema["transform"] == {
        "height": 46,
        "width": 64,
        "channels": 3,
        "fit": "crop",
        "matte": 255,
        "pad": 0,
        "resample": "bilinear",
        "orientation": "exif",
    }
    assert build.load(prepared, "train_x.npy").shape == (5, 46, 64, 3)
    source = prepared.stats["source_images"]
    assert source["count"] == 5 and source["resized"] == 5
    assert source["height"] == {"min": 20, "median": 46, "max": 68}
    assert source["modes"] == {"L": 2, "RGB": 2, "RGBA": 1}


def test_the_image_size_and_fit_asked_for_are_used(build: Build) -> None:
    members = {f"{c}/{i}.png": build.png(40 + i, 30, "L", seed=i) for c in "ab" for i in range(3)}
    source = build.zip("gray.zip", members)
    prepared = build.run(source, image_size=(16, 12), image_fit="pad")
    assert prepared.schema["shape"] == [16, 12, 1]  # every image gray: one channel
    assert prepared.schema["transform"]["fit"] == "pad"
    x = all_pixels(build, prepared)
    assert x.shape == (6, 16, 12, 1)
    # 4:3 landscape images padded into a portrait frame: black bands above and below
    assert (x[:, 0] == 0).all() and (x[:, -1] == 0).all()


def test_a_size_whose_prepared_data_is_over_the_limit_is_refused(build: Build) -> None:
    members = folder(build, n=2)
    with pytest.raises(InvalidDataset, match=r"4 images of 100x100x1 take 40000 bytes"):
        build.run(
            build.zip("pets.zip", members),
            image_size=(100, 100),
            limits=IngestLimits(max_unpacked_bytes=20_000),
        )
