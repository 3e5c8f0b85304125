"""image-folder: a zip / tar / tar.gz of PNG or JPEG images, one sub-folder per class.

Accepted layouts (junk such as ``__MACOSX/`` and hidden files aside)::

    cat/1.png                 one folder per class
    pets/cat/1.png            ... under one common top folder
    train/cat/1.png           train/ and test/ each with class folders: the data's own
    test/cat/9.png            test split (optionally under one common top folder too)

Images are decoded one at a time with a pixel limit and appended to a raw file in the
scratch directory, read back later in windows: memory stays bounded by one image.
"""

from __future__ import annotations

import io
import warnings
from array import array
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nimbus.datasets.archive import iter_files
from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.rows import FileRows, windows
from nimbus.errors import InvalidDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_COLOR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
_SPLIT_FOLDERS = frozenset({"train", "test"})


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Decode every image of the archive; labels are class folder names."""
    sink = _PixelSink(ctx.scratch_file("images.raw"), ctx.display)
    folders: dict[tuple[str, ...], int] = {}  # each distinct folder, numbered
    image_folders = array("q")  # each image's folder number, compactly
    first = ""  # the first image's path, for messages
    # A PNG or JPEG with this many pixels is far larger than any sane encoding of them.
    max_bytes = 8 * ctx.limits.max_image_pixels + (1 << 20)
    try:
        for member in iter_files(source, ctx.limits, ctx.display):
            if not member.path.lower().endswith(IMAGE_SUFFIXES):
                raise InvalidDataset(
                    f"archive {ctx.display!r}: member {member.path!r} is not a PNG or JPEG image"
                )
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
            pixels = decode_image(member.read_all(max_bytes), member.path, ctx)
            sink.add(pixels, member.path)
            image_folders.append(folders.setdefault(parts, len(folders)))
    finally:
        sink.close()
    if not image_folders:
        raise InvalidDataset(f"archive {ctx.display!r} holds no PNG or JPEG images")
    x = sink.finish()
    classes, test = resolve_layout([list(parts) for parts in folders], ctx.display)
    which = np.frombuffer(image_folders, dtype=np.int64)
    return RawDataset(
        task=Task.IMAGE,
        x_parts=[x],
        labels=np.array(classes, dtype=str)[which],
        schema={"shape": list(x.shape[1:]), "dtype": "uint8"},
        test_mask=None if test is None else test[which],
    )


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


def decode_image(data: bytes, member: str, ctx: ReadContext) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 ``[H, W, C]`` (C 1 or 3) under the pixel limit."""
    where = f"archive {ctx.display!r}: image {member!r}"
    limit = ctx.limits.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
                width, height = image.size
                if width * height > limit:
                    raise InvalidDataset(
                        f"{where} has {width}x{height} pixels, over the limit of {limit}"
                    )
                image.load()
                if image.mode in _GRAY_MODES:
                    pixels = np.asarray(image.convert("L"))[:, :, None]
                elif image.mode in _COLOR_MODES:
                    pixels = np.asarray(image.convert("RGB"))
                else:
                    raise InvalidDataset(f"{where} has unsupported pixel mode {image.mode!r}")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidDataset(f"{where} is too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidDataset(f"{where} cannot be decoded as PNG or JPEG ({exc})") from exc
    return pixels


class _PixelSink:
    """Appends images of one size to a raw uint8 file; widens it to RGB once if colour comes."""

    def __init__(self, path: Path, display: str) -> None:
        self.path = path
        self.display = display
        self.file = path.open("wb")
        self.size: tuple[int, int] | None = None
        self.channels = 1
        self.count = 0
        self.first = ""

    def add(self, pixels: np.ndarray, member: str) -> None:
        height, width, channels = pixels.shape
        if self.size is None:
            self.size, self.channels, self.first = (height, width), channels, member
        elif self.size != (height, width):
            h0, w0 = self.size
            raise InvalidDataset(
                f"archive {self.display!r}: image {member!r} is {width}x{height} but "
                f"{self.first!r} is {w0}x{h0}; all images must share one size"
            )
        if channels > self.channels:
            self._widen()
        elif channels < self.channels:
            pixels = np.repeat(pixels, self.channels, axis=2)
        self.file.write(np.ascontiguousarray(pixels).tobytes())
        self.count += 1

    def _widen(self) -> None:
        """Rewrite the grayscale images so far as RGB (happens at most once)."""
        self.file.close()
        wide = self.path.with_suffix(".rgb")
        with wide.open("wb") as out:
            for _, gray in windows(self._rows(1), 16 * 1024 * 1024):
                np.repeat(gray, 3, axis=3).tofile(out)
        wide.replace(self.path)
        self.channels = 3
        self.file = self.path.open("ab")

    def _rows(self, channels: int) -> FileRows:
        assert self.size is not None
        return FileRows(self.path, 0, np.dtype(np.uint8), (self.count, *self.size, channels))

    def close(self) -> None:
        self.file.close()

    def finish(self) -> FileRows:
        """The images written, ``[N, H, W, C]`` uint8, read back from the file on demand."""
        self.file.close()
        return self._rows(self.channels)
