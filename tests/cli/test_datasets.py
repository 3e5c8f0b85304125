"""``nimbus datasets`` end to end against a real server, checked on the real bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nimbus.demo_data import digits, write_digits_folder, write_digits_zip
from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess
from tests.helpers_photos import photo_members

PER_CLASS = 6
CLASSES = [str(c) for c in range(10)]


@pytest.fixture
def cli(nimbus: Nimbus, shared_server: ServerProcess) -> Nimbus:
    nimbus.env.update(NIMBUS_URL=shared_server.url, NIMBUS_TOKEN=shared_server.admin_token)
    return nimbus


def test_upload_show_list_download_delete(cli: Nimbus, tmp_path: Path) -> None:
    data = write_digits_zip(tmp_path / "digits.zip", per_class=PER_CLASS)
    version = cli.json("datasets", "upload", "cli-digits", str(data.path))
    assert (version["dataset"], version["version"]) == ("cli-digits", 1)
    assert version["task"] == "image-classification" and version["format"] == "image-folder"
    assert version["classes"] == CLASSES and version["num_classes"] == 10
    assert version["schema"]["shape"] == [8, 8, 1] and version["schema"]["dtype"] == "uint8"
    splits = version["splits"]
    assert sum(s["size"] for s in splits.values()) == data.count == 10 * PER_CLASS
    for cls in CLASSES:
        assert sum(s["per_class"].get(cls, 0) for s in splits.values()) == PER_CLASS
    source_hash = hashlib.sha256(data.path.read_bytes()).hexdigest()
    assert version["source_hash"] == source_hash

    # The same bytes again: the same version, not a new one.
    assert cli.json("datasets", "upload", "cli-digits", str(data.path))["version"] == 1

    shown = cli("datasets", "show", "cli-digits").stdout
    for text in (
        "cli-digits:1",
        "image-classification",
        "image-folder",
        "8x8x1 uint8",
        "train",
        "test",
        version["content_hash"],
    ):
        assert text in shown, text
    assert cli.json("datasets", "show", "cli-digits:1") == version

    listed = cli.json("datasets", "list")["datasets"]
    assert ("cli-digits", 1) in [(d["name"], d["latest_version"]) for d in listed]
    assert "cli-digits" in cli("datasets", "list").stdout

    out = tmp_path / "download"
    got = cli.json("datasets", "download", "cli-digits", str(out))
    assert (got["dataset"], got["version"]) == ("cli-digits", 1)
    assert (out / "digits.zip").read_bytes() == data.path.read_bytes()
    check_prepared_arrays(out, version)

    cli("datasets", "delete", "cli-digits:1")
    assert "no version 1" in cli("datasets", "show", "cli-digits:1", code=4).stderr
    assert cli.json("datasets", "delete", "cli-digits")["name"] == "cli-digits"
    assert "cli-digits" not in [d["name"] for d in cli.json("datasets", "list")["datasets"]]


def check_prepared_arrays(folder: Path, version: dict[str, object]) -> None:
    """Every prepared example is one of the uploaded images, under its own label."""
    pixels, labels = digits(PER_CLASS)
    original = {image.tobytes(): str(label) for image, label in zip(pixels, labels, strict=True)}
    seen: set[bytes] = set()
    for split, info in version["splits"].items():  # type: ignore[attr-defined]
        x = np.load(folder / f"{split}_x.npy", allow_pickle=False)
        y = np.load(folder / f"{split}_y.npy", allow_pickle=False)
        assert x.shape == (info["size"], 8, 8, 1) and x.dtype == np.uint8
        assert y.shape == (info["size"],)
        for image, label in zip(x, y, strict=True):
            key = image[..., 0].tobytes()
            assert original[key] == CLASSES[int(label)]
            seen.add(key)
    assert seen == set(original)  # nothing lost, nothing invented


def test_a_directory_uploads_as_a_tar(cli: Nimbus, tmp_path: Path) -> None:
    folder = write_digits_folder(tmp_path / "digits-dir", per_class=2)
    version = cli.json("datasets", "upload", "folder-digits", str(folder.path), "--seed", "3")
    assert version["files"]["source"]["name"] == "digits-dir.tar"
    assert sum(s["size"] for s in version["splits"].values()) == 20
    human = cli("datasets", "upload", "folder-digits", str(folder.path), "--seed", "3")
    assert "folder-digits:1" in human.stdout
    cli("datasets", "delete", "folder-digits")


def test_bad_uploads_are_reported(cli: Nimbus, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip archive")
    result = cli("datasets", "upload", "junk", str(junk), code=2)
    assert result.stderr.startswith("error: ")
    cli("datasets", "show", "never-uploaded", code=4)
    cli("datasets", "download", "never-uploaded", str(tmp_path / "x"), code=4)


def test_the_sdk_example_runs(shared_server: ServerProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env.update(
        NIMBUS_URL=shared_server.url,
        NIMBUS_TOKEN=shared_server.admin_token,
        NIMBUS_HOME=str(tmp_path / "home"),
    )
    example = Path(__file__).parents[2] / "examples" / "sdk_datasets.py"
    done = subprocess.run(
        [sys.executable, str(example), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "uploaded 1797 images as digits:" in done.stdout
    assert (tmp_path / "download" / "train_x.npy").exists()


def test_a_photo_folder_uploads_at_the_image_size_asked_for(cli: Nimbus, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for name, data in photo_members(4).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    args = ("datasets", "upload", "cli-photos", str(root / "photos"))
    version = cli.json(*args, "--image-size", "20x30", "--image-fit", "pad")
    assert version["schema"]["shape"] == [20, 30, 3]
    assert version["schema"]["transform"]["fit"] == "pad"
    result = cli(*args, "--image-size", "huge", code=2)
    assert "image size 'huge' is not HxW" in result.stderr
    cli("datasets", "delete", "cli-photos")
