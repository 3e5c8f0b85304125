"""image-folder: a zip / tar / tar.gz of PNG or JPEG images, one sub-folder per class.

Accepted layouts (junk such as ``__MACOSX/`` and hidden files aside)::

    cat/1.png                 one folder per class
    pets/cat/1.png            ... under one common top folder
    train/cat/1.png           train/ and test/ each with class folders: the data's own
    test/cat/9.png            test split (optionally under one common top folder too)

With a group column asked for (``group_column``, a sensitive attribute), the archive also
holds ``groups.csv`` beside the class folders: a header row with ``path`` and that column,
then one row per image (its path from the file's folder, e.g. ``cat/1.png``).

Images may differ in size and mode. Two passes over the archive: the first reads each
image's header only (its upright size and mode, under the pixel limit) to choose the
:class:`~nimbus.datasets.imagefit.ImageFit` (the size the upload asked for, else
:func:`~nimbus.datasets.imagefit.default_size`; one channel when every image is grayscale,
else three); the second decodes each image through that fit, one at a time, appending it to
a raw file in the scratch directory, read back later in windows: memory stays bounded by one
image.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from nimbus.datasets.archive import ArchiveFile, iter_files
from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.imagefit import (
    DEFAULT_FIT,
    ImageFit,
    PixelLimit,
    default_size,
    fit_image,
    header,
    open_image,
)
from nimbus.datasets.rows import FileRows
from nimbus.errors import InvalidDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GROUPS_FILE = "groups.csv"
MAX_GROUPS_FILE = 64 * 1024 * 1024
FORMATS = ("PNG", "JPEG")
_SPLIT_FOLDERS = frozenset({"train", "test"})
_T = TypeVar("_T")


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Decode every image of the archive to one size; labels are class folder names."""
    survey = _survey(source, ctx)
    fit = _choose_fit(survey, ctx)
    needed = survey.count * fit.height * fit.width * fit.channels
    if needed > ctx.limits.max_unpacked_bytes:
        raise InvalidDataset(
            f"archive {ctx.display!r}: {survey.count} images of {fit.height}x{fit.width}x"
            f"{fit.channels} take {needed} bytes, over the limit of "
            f"{ctx.limits.max_unpacked_bytes}; choose a smaller image size"
        )
    path = ctx.scratch_file("images.raw")
    with path.open("wb") as sink:
        for member in _images(source, ctx):
            pixels = _fit(member, ctx, fit)
            sink.write(np.ascontiguousarray(pixels).tobytes())
    x = FileRows(path, 0, np.dtype(np.uint8), (survey.count, fit.height, fit.width, fit.channels))
    classes, test = resolve_layout([list(parts) for parts in survey.folders], ctx.display)
    which = np.frombuffer(survey.image_folders, dtype=np.int64)
    return RawDataset(
        task=Task.IMAGE,
        x_parts=[x],
        labels=np.array(classes, dtype=str)[which],
        schema={
            "shape": [fit.height, fit.width, fit.channels],
            "dtype": "uint8",
            "transform": fit.record(),
        },
        test_mask=None if test is None else test[which],
        stats={"source_images": survey.summary(fit)},
        groups=None if survey.groups_file is None else _groups(survey, ctx),
    )


class _Survey:
    """The first pass: each image's folder, upright size and mode."""

    def __init__(self) -> None:
        self.folders: dict[tuple[str, ...], int] = {}  # each distinct folder, numbered
        self.image_folders = array("q")  # each image's folder number, compactly
        self.heights = array("q")
        self.widths = array("q")
        self.modes: Counter[str] = Counter()
        self.gray = True
        self.paths: list[str] = []  # each image's archive path (kept with a groups file)
        self.groups_file: tuple[str, bytes] | None = None  # its folder and bytes

    @property
    def count(self) -> int:
        return len(self.image_folders)

    def summary(self, fit: ImageFit) -> dict[str, Any]:
        """What the sources looked like and how many the fit had to resample."""
        heights, widths = (
            np.frombuffer(self.heights, np.int64),
            np.frombuffer(self.widths, np.int64),
        )
        resized = int(np.count_nonzero((heights != fit.height) | (widths != fit.width)))
        return {
            "count": self.count,
            "height": _spread(heights),
            "width": _spread(widths),
            "modes": dict(sorted(self.modes.items())),
            "resized": resized,
        }


def _spread(values: np.ndarray) -> dict[str, int]:
    return {
        "min": int(values.min()),
        "median": round(float(np.median(values))),
        "max": int(values.max()),
    }


def _survey(source: Path, ctx: ReadContext) -> _Survey:
    survey = _Survey()
    first = ""  # the first image's path, for messages
    for member in _images(source, ctx, survey):
        parts = tuple(member.path.split("/")[:-1])
        if not parts:
            raise InvalidDataset(
                f"archive {ctx.display!r}: image {member.path!r} is not inside a class folder"
            )
        if first and len(parts) != first.count("/"):
            raise InvalidDataset(
                f"archive {ctx.display!r}: images {first!r} and {member.path!r} sit at "
                "different folder depths; expected one sub-folder per class"
            )
        first = first or member.path
        found = _open(member, ctx, header)
        survey.heights.append(found.height)
        survey.widths.append(found.width)
        survey.modes[found.mode] += 1
        survey.gray = survey.gray and found.gray
        survey.image_folders.append(survey.folders.setdefault(parts, len(survey.folders)))
        if ctx.options.group_column is not None:
            survey.paths.append(member.path)
    if not survey.count:
        raise InvalidDataset(f"archive {ctx.display!r} holds no PNG or JPEG images")
    if ctx.options.group_column is not None and survey.groups_file is None:
        raise InvalidDataset(
            f"archive {ctx.display!r} has no {GROUPS_FILE} (a 'path' and a "
            f"{ctx.options.group_column!r} column, one row per image) for its group column"
        )
    return survey


def _choose_fit(survey: _Survey, ctx: ReadContext) -> ImageFit:
    size = ctx.options.image_size
    if size is None:
        size = default_size(
            np.frombuffer(survey.heights, np.int64), np.frombuffer(survey.widths, np.int64)
        )
    return ImageFit(size[0], size[1], 1 if survey.gray else 3, ctx.options.image_fit or DEFAULT_FIT)


def _images(source: Path, ctx: ReadContext, survey: _Survey | None = None) -> Iterator[ArchiveFile]:
    """The image members; with a group column, the groups file is kept in ``survey``
    (the first pass) or passed over (the second)."""
    for member in iter_files(source, ctx.limits, ctx.display):
        folder, _, name = member.path.rpartition("/")
        if ctx.options.group_column is not None and name == GROUPS_FILE and "/" not in folder:
            if survey is not None:
                survey.groups_file = (folder, member.read_all(MAX_GROUPS_FILE))
            continue
        if not member.path.lower().endswith(IMAGE_SUFFIXES):
            raise InvalidDataset(
                f"archive {ctx.display!r}: member {member.path!r} is not a PNG or JPEG image"
            )
        yield member


def _fit(member: ArchiveFile, ctx: ReadContext, fit: ImageFit) -> np.ndarray:
    return _open(member, ctx, lambda image: fit_image(image, fit))


def _open(member: ArchiveFile, ctx: ReadContext, use: Callable[[Image.Image], _T]) -> _T:
    """``use(image)`` on the member opened as PNG or JPEG, every failure worded for the user."""
    where = f"archive {ctx.display!r}: image {member.path!r}"
    limit = ctx.limits.max_image_pixels
    # A PNG or JPEG with this many pixels is far larger than any sane encoding of them.
    data = member.read_all(8 * limit + (1 << 20))
    try:
        with open_image(data, FORMATS, limit) as image:
            return use(image)
    except PixelLimit as exc:
        raise InvalidDataset(f"{where} has {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidDataset(f"{where} is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidDataset(f"{where} cannot be decoded as PNG or JPEG ({exc})") from exc


def resolve_layout(folders: list[list[str]], display: str) -> tuple[list[str], np.ndarray | None]:
    """Each folder's class (folders all of one depth) and whether it holds test images."""
    if not folders:
        return [], None
    depth = len(folders[0])
    tops = sorted({parts[0] for parts in folders})
    if depth == 1:
        return [parts[0] for parts in folders], None
    if depth == 2 and set(tops) == _SPLIT_FOLDERS:
        return [p[1] for p in folders], np.array([p[0] == "test" for p in folders])
    if depth == 2 and len(tops) == 1:
        return [parts[1] for parts in folders], None
    seconds = sorted({parts[1] for parts in folders})
    if depth == 3 and len(tops) == 1 and set(seconds) == _SPLIT_FOLDERS:
        return [p[2] for p in folders], np.array([p[1] == "test" for p in folders])
    raise InvalidDataset(
        f"archive {display!r}: expected one sub-folder per class (optionally under one top "
        f"folder, or under train/ and test/); found top folders {tops[:10]} with images "
        f"{depth} folders deep"
    )


def _groups(survey: _Survey, ctx: ReadContext) -> np.ndarray:
    """Each image's group, from the groups file, in the images' order."""
    import csv
    import io

    assert survey.groups_file is not None and ctx.options.group_column is not None
    folder, data = survey.groups_file
    column = ctx.options.group_column
    where = f"archive {ctx.display!r}: {GROUPS_FILE}"
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidDataset(f"{where} is not a UTF-8 CSV file ({exc})") from None
    if not rows or "path" not in rows[0] or column not in rows[0]:
        raise InvalidDataset(f"{where} needs a header row with 'path' and {column!r}")
    prefix = f"{folder}/" if folder else ""
    by_path: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        path, group = (row.get("path") or "").strip(), (row.get(column) or "").strip()
        if not path or not group:
            raise InvalidDataset(f"{where} line {number} has no path or no {column!r}")
        by_path[prefix + path.lstrip("/")] = group
    missing = next((p for p in survey.paths if p not in by_path), None)
    if missing is not None:
        raise InvalidDataset(f"{where} has no row for image {missing!r}")
    return np.array([by_path[p] for p in survey.paths], dtype=str)
