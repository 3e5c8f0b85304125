"""How a photo of any size and mode becomes one training-size tensor: the *image fit*.

Ingest fits every image of an image-folder upload with one :class:`ImageFit`, records it in
the dataset version (``schema["transform"]``), and training copies it into the model's
spec.json (``preprocessing["transform"]``), so a replica fits what clients send to
``/predict`` with the very same function: the same file gives the same bytes at ingest and
at serving time. The steps, in order (docs/datasets.md):

1. **EXIF orientation** is applied (``ImageOps.exif_transpose``): a phone photo stored
   sideways with an orientation tag is seen upright.
2. **Mode**: transparency is composited over white (icons and logos are drawn for light
   backgrounds: over black a black glyph would vanish); then the image becomes
   ``L`` (one channel, ITU-R 601-2 luma) or ``RGB`` (three; grayscale is replicated).
   16-bit grayscale keeps its top 8 bits.
3. **Size**, aspect preserved, with bilinear (antialiased) resampling: ``crop`` scales the
   image until it covers ``height x width`` and cuts the centre out; ``pad`` scales it until
   it fits inside and centres it on black. An image already of that size is not resampled.

A large JPEG is decoded at a reduced scale (1/2, 1/4, 1/8; never below the size the fit
needs) before resampling, which makes wallpapers cheap to fit; ingest and serving take the
same path, so this changes nothing between them.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from nimbus.errors import InvalidInput

FITS = ("crop", "pad")
DEFAULT_FIT = "crop"
# The default size's longer side is at most this: the built-in cnn trains on this machine's
# CPUs in minutes at this size, and a few thousand photos stay well under a GiB prepared.
DEFAULT_MAX_SIDE = 64
MIN_SIDE = 4  # the cnn's smallest input
MAX_SIDE = 1024  # a batch of 64 such RGB images is ~0.8 GB as float32
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ORIENTATION = 0x0112
_SWAPPED = frozenset({5, 6, 7, 8})  # orientations that turn the image a quarter
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*(?:[xX*]\s*([0-9]{1,5}))?\s*$")


@dataclass(frozen=True)
class ImageFit:
    """One training size and channel count, and how images are brought to it."""

    height: int
    width: int
    channels: int
    fit: str = DEFAULT_FIT

    def __post_init__(self) -> None:
        for side in (self.height, self.width):
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise InvalidInput(
                    f"image sides must be between {MIN_SIDE} and {MAX_SIDE} pixels, "
                    f"got {self.height}x{self.width}"
                )
        if self.channels not in (1, 3):
            raise InvalidInput(f"images have 1 or 3 channels, not {self.channels}")
        if self.fit not in FITS:
            raise InvalidInput(f"unknown image fit {self.fit!r}; choose one of {', '.join(FITS)}")

    def record(self) -> dict[str, Any]:
        """The JSON form kept in a dataset version's schema and a model spec."""
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "fit": self.fit,
            "matte": 255,  # what transparent pixels are composited over: white
            "pad": 0,  # what the pad fit fills with: black
            "resample": "bilinear",
            "orientation": "exif",
        }

    @classmethod
    def from_record(cls, raw: Mapping[str, Any]) -> ImageFit:
        """Read :meth:`record`'s form back; InvalidInput if it is not one this code applies."""
        try:
            fit = cls(int(raw["height"]), int(raw["width"]), int(raw["channels"]), str(raw["fit"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed image transform {dict(raw)!r}: {exc!r}") from None
        if fit.record() != dict(raw):
            raise InvalidInput(f"image transform {dict(raw)!r} is not one this version applies")
        return fit


def parse_image_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or ``"N"`` for a square) as ``(height, width)``; InvalidInput otherwise."""
    match = _SIZE.match(text)
    if match is None:
        raise InvalidInput(f"image size {text!r} is not HxW (for example 64x64)")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    for side in (height, width):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidInput(
                f"image size {text!r}: sides must be between {MIN_SIDE} and {MAX_SIDE} pixels"
            )
    return height, width


def parse_fit(text: str) -> str:
    """A fit name (``crop`` or ``pad``); InvalidInput otherwise."""
    fit = text.strip().lower()
    if fit not in FITS:
        raise InvalidInput(f"unknown image fit {text!r}; choose one of {', '.join(FITS)}")
    return fit


def default_size(heights: np.ndarray, widths: np.ndarray) -> tuple[int, int]:
    """The training size chosen from the data: the median height and median width (upright,
    rounded to whole pixels), scaled down, aspect kept, until the longer side is at most
    :data:`DEFAULT_MAX_SIDE`; never below :data:`MIN_SIDE`."""
    height = round(float(np.median(heights)))
    width = round(float(np.median(widths)))
    longer = max(height, width)
    if longer > DEFAULT_MAX_SIDE:
        height = round(height * DEFAULT_MAX_SIDE / longer)
        width = round(width * DEFAULT_MAX_SIDE / longer)
    return max(MIN_SIDE, height), max(MIN_SIDE, width)


@dataclass(frozen=True)
class Header:
    """What an image file says about itself before any pixel is decoded."""

    height: int  # upright: after the EXIF orientation
    width: int
    mode: str

    @property
    def gray(self) -> bool:
        return self.mode in GRAY_MODES


def open_image(data: bytes, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Open (not decode) ``data``; raise :class:`PixelLimit` past ``max_pixels``.

    Pillow's own errors (not an image, a decompression bomb) propagate for the caller to
    word; its bomb warning is raised as an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=list(formats))
    if image.width * image.height > max_pixels:
        image.close()
        raise PixelLimit(image.width, image.height, max_pixels)
    return image


class PixelLimit(Exception):
    """An image has more pixels than allowed (each caller words and classifies it)."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        super().__init__(f"{width}x{height} pixels, over the limit of {limit}")
        self.width, self.height, self.limit = width, height, limit


def header(image: Image.Image) -> Header:
    """The upright size and the mode of an opened image, without decoding it."""
    width, height = image.size
    if _orientation(image) in _SWAPPED:
        width, height = height, width
    return Header(height, width, image.mode)


def fit_image(image: Image.Image, fit: ImageFit) -> np.ndarray:
    """Apply ``fit`` to an opened image: uint8 ``[height, width, channels]``.

    Pillow's decoding errors propagate for the caller to word.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _draft(image, fit)
        image.load()
        # Most images carry no orientation: they skip exif_transpose's copy.
        if image.getexif().get(_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        sized = _resize(_to_mode(image, fit.channels), fit)
    return np.asarray(sized, dtype=np.uint8).reshape(fit.height, fit.width, fit.channels)


def _orientation(image: Image.Image) -> int:
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        return int(exif.get(_ORIENTATION, 1))
    except (SyntaxError, ValueError, TypeError, OSError, struct.error):
        return 1


def _draft(image: Image.Image, fit: ImageFit) -> None:
    """Let a JPEG decode at the smallest DCT scale still at least as large as the fit needs."""
    if image.format != "JPEG":
        return
    up = header(image)
    scale = _scale(up.height, up.width, fit)
    need_w, need_h = math.ceil(up.width * scale), math.ceil(up.height * scale)
    if (up.width, up.height) != image.size:  # stored turned: ask in stored orientation
        need_w, need_h = need_h, need_w
    if need_w < image.width and need_h < image.height:
        image.draft(None, (need_w, need_h))


def _scale(height: int, width: int, fit: ImageFit) -> float:
    ratios = (fit.height / height, fit.width / width)
    return max(ratios) if fit.fit == "crop" else min(ratios)


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        wide = np.asarray(image.convert("I"), dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    elif mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    elif _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def _resize(image: Image.Image, fit: ImageFit) -> Image.Image:
    target = (fit.width, fit.height)
    if image.size == target:
        return image
    scale = _scale(image.height, image.width, fit)
    width, height = image.width * scale, image.height * scale
    if fit.fit == "crop":
        size = (max(fit.width, round(width)), max(fit.height, round(height)))
    else:
        size = (min(fit.width, max(1, round(width))), min(fit.height, max(1, round(height))))
    scaled = image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)
    if scaled.size == target:
        return scaled
    if fit.fit == "crop":
        left, top = (size[0] - fit.width) // 2, (size[1] - fit.height) // 2
        return scaled.crop((left, top, left + fit.width, top + fit.height))
    canvas = Image.new(scaled.mode, target, 0)
    canvas.paste(scaled, ((fit.width - size[0]) // 2, (fit.height - size[1]) // 2))
    return canvas
