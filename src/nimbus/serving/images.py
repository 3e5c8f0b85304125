"""Decoding uploaded images for the ``/predict`` route: PNG or JPEG only, pixel-limited.

A model whose spec records an image transform (``preprocessing["transform"]``, made at
ingest) gets :func:`fit_upload`: the very function ingest applied, so a photo sent to
``/predict`` becomes the same tensor it would have become in the dataset. Older models
(no transform) get :func:`decode_image`: a plain stretch to the input size.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from nimbus.datasets.imagefit import ImageFit, PixelLimit, fit_image, open_image
from nimbus.errors import InvalidInput, PayloadTooLarge

FORMATS = ("PNG", "JPEG")
_MODES = {1: "L", 3: "RGB"}


def decode_image(
    data: bytes, *, height: int, width: int, channels: int, max_pixels: int
) -> np.ndarray:
    """Decode ``data`` to UINT8 ``[height, width, channels]``, resizing and converting colour.

    The pixel count is read from the header and checked before any pixel is decoded.
    """
    mode = _MODES.get(channels)
    if mode is None:
        raise InvalidInput(f"images with {channels} channels are not supported")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
            pixels = opened.width * opened.height
            if pixels > max_pixels:
                raise PayloadTooLarge(
                    f"the image has {pixels} pixels, above the limit of {max_pixels}"
                )
            image = opened.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput("the body is not a PNG or JPEG image (or it is too large)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"the image cannot be decoded: {exc}") from None
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def fit_upload(data: bytes, fit: ImageFit, *, max_pixels: int) -> np.ndarray:
    """Decode ``data`` through ``fit`` to UINT8 ``[height, width, channels]``, exactly as
    ingest did; the pixel count is checked from the header before any pixel is decoded."""
    try:
        with open_image(data, FORMATS, max_pixels) as image:
            return fit_image(image, fit)
    except PixelLimit as exc:
        raise PayloadTooLarge(
            f"the image has {exc.width * exc.height} pixels, above the limit of {max_pixels}"
        ) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput("the body is not a PNG or JPEG image (or it is too large)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"the image cannot be decoded: {exc}") from None
