"""Bundled demo data: scikit-learn's handwritten digits as an image-folder dataset.

``sklearn.datasets.load_digits`` ships inside scikit-learn (no download): 1,797 8x8
grayscale images of the digits 0-9 with pixel values 0..16. They are scaled to 0..255 and
written as PNG files in one folder per class, either into a .zip or a plain directory. The
output is byte-for-byte reproducible, so uploading it twice finds the same version.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = (
    "scikit-learn's handwritten digits (sklearn.datasets.load_digits, shipped with scikit-learn)"
)
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class DemoData:
    """What was written: the path, the number of images and the images per class."""

    path: Path
    count: int
    per_class: dict[str, int]

    @property
    def classes(self) -> list[str]:
        return sorted(self.per_class)


def digits(per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``uint8 [N, 8, 8]`` images (0..255) and ``int64 [N]`` labels.

    ``per_class`` keeps only the first images of each class (for quick tests).
    """
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only here

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    pixels = np.clip(images, 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        keep.sort()
        pixels, labels = pixels[keep], labels[keep]
    return pixels, labels


def png_bytes(image: np.ndarray) -> bytes:
    """One grayscale image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _members(per_class: int | None) -> list[tuple[str, bytes]]:
    pixels, labels = digits(per_class)
    return [
        (f"{label}/{index:04d}.png", png_bytes(image))
        for index, (image, label) in enumerate(zip(pixels, labels, strict=True))
    ]


def _summary(path: Path, members: list[tuple[str, bytes]]) -> DemoData:
    counts = Counter(name.split("/", 1)[0] for name, _ in members)
    return DemoData(path, len(members), dict(sorted(counts.items())))


def write_digits_zip(path: Path, per_class: int | None = None) -> DemoData:
    """Write the digits as ``path`` (a .zip with one folder per class)."""
    members = _members(per_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data)
    return _summary(path, members)


def write_digits_folder(path: Path, per_class: int | None = None) -> DemoData:
    """Write the digits into directory ``path``, one sub-folder per class."""
    members = _members(per_class)
    for name, data in members:
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return _summary(path, members)
