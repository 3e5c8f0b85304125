"""The image fit: orientation, mode, size — the rules docs/datasets.md states."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nimbus.datasets.imagefit import (
    DEFAULT_MAX_SIDE,
    ImageFit,
    PixelLimit,
    default_size,
    fit_image,
    header,
    open_image,
    parse_fit,
    parse_image_size,
)
from nimbus.errors import InvalidInput

FORMATS = ("PNG", "JPEG")


def encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def fitted(data: bytes, fit: ImageFit) -> np.ndarray:
    with open_image(data, FORMATS, 10**8) as image:
        return fit_image(image, fit)


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels, "RGB")


def test_an_image_already_of_the_size_and_mode_is_untouched() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    got = fitted(encode(Image.fromarray(pixels, "RGB")), ImageFit(6, 8, 3))
    assert np.array_equal(got, pixels)


def test_crop_keeps_the_centre_and_the_aspect() -> None:
    # 40x10 (wide) into 10x10: scaled to 40x10 as is, then the middle 10 columns kept.
    pixels = np.zeros((10, 40), np.uint8)
    pixels[:, 15:25] = 200
    got = fitted(encode(Image.fromarray(pixels, "L")), ImageFit(10, 10, 1, "crop"))
    assert got.shape == (10, 10, 1)
    assert (got == 200).all()


def test_pad_keeps_everything_centred_on_black() -> None:
    white = Image.new("L", (40, 10), 255)
    got = fitted(encode(white), ImageFit(20, 20, 1, "pad"))[:, :, 0]
    # scaled to 20x5, pasted at row (20 - 5) // 2 = 7
    assert (got[7:12] == 255).all()
    assert (got[:7] == 0).all() and (got[12:] == 0).all()


def test_exif_orientation_is_applied() -> None:
    # Stored 8 wide, 4 high, tagged "rotate 90 clockwise to display" (orientation 6).
    stored = halves(8, 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif, quality=100)
    with open_image(data, FORMATS, 10**8) as image:
        assert (header(image).height, header(image).width) == (8, 4)
        got = fit_image(image, ImageFit(8, 4, 3))
    # Upright, the red (left) half is on top.
    assert got[:3, :, 0].min() > 200 and got[:3, :, 2].max() < 60
    assert got[5:, :, 2].min() > 200 and got[5:, :, 0].max() < 60


def test_transparency_is_composited_over_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # black everywhere ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half only: a black glyph, as icons have
    got = fitted(encode(Image.fromarray(rgba, "RGBA")), ImageFit(4, 4, 3))
    assert (got[:2] == 0).all() and (got[2:] == 255).all()
    half = rgba.copy()
    half[..., 3] = 128
    assert (fitted(encode(Image.fromarray(half, "RGBA")), ImageFit(4, 4, 1)) == 127).all()


def test_palette_and_gray_modes_become_the_channel_count() -> None:
    palette = halves(8, 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    rgb = fitted(encode(palette), ImageFit(8, 8, 3))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 7].tolist() == [0, 0, 255]
    gray = fitted(encode(palette), ImageFit(8, 8, 1))
    assert gray.shape == (8, 8, 1) and gray[0, 0, 0] == 76  # ITU-R 601-2 luma of red
    la = Image.fromarray(np.full((8, 8, 2), (100, 255), np.uint8), "LA")
    assert (fitted(encode(la), ImageFit(8, 8, 3)) == 100).all()


def test_sixteen_bit_gray_keeps_its_top_byte() -> None:
    wide = Image.frombytes("I;16", (4, 4), np.full((4, 4), 0xABCD, "<u2").tobytes())
    got = fitted(encode(wide), ImageFit(4, 4, 1))
    assert (got == 0xAB).all()


def test_the_pixel_limit_is_read_from_the_header() -> None:
    with pytest.raises(PixelLimit, match="8x6 pixels, over the limit of 40"):
        open_image(encode(Image.new("L", (8, 6))), FORMATS, 40)


def test_a_large_jpeg_decodes_reduced_and_still_fits() -> None:
    big = halves(1600, 1200)
    got = fitted(encode(big, "JPEG", quality=95), ImageFit(30, 40, 3))
    assert got.shape == (30, 40, 3)
    assert got[:, :18, 0].min() > 200 and got[:, 22:, 2].min() > 200


def test_the_default_size_is_the_median_capped() -> None:
    heights, widths = np.array([10, 20, 30]), np.array([12, 24, 40])
    assert default_size(heights, widths) == (20, 24)
    big = default_size(np.array([480, 600]), np.array([640, 800]))
    assert max(big) == DEFAULT_MAX_SIDE and big == (DEFAULT_MAX_SIDE * 3 // 4, DEFAULT_MAX_SIDE)
    assert default_size(np.array([2]), np.array([2])) == (4, 4)


@pytest.mark.parametrize(
    ("text", "size"), [("64x48", (64, 48)), (" 32 X 32 ", (32, 32)), ("28", (28, 28))]
)
def test_parse_image_size(text: str, size: tuple[int, int]) -> None:
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["", "x", "64x", "64x48x3", "-4x4", "2x64", "64x5000", "²x2"])
def test_parse_image_size_refuses(text: str) -> None:
    with pytest.raises(InvalidInput, match="image size"):
        parse_image_size(text)


def test_fits_and_records_are_checked() -> None:
    assert parse_fit(" PAD ") == "pad"
    with pytest.raises(InvalidInput, match="unknown image fit 'stretch'"):
        parse_fit("stretch")
    fit = ImageFit(16, 12, 3, "pad")
    assert ImageFit.from_record(fit.record()) == fit
    with pytest.raises(InvalidInput, match="not one this version applies"):
        ImageFit.from_record({**fit.record(), "resample": "lanczos"})
    with pytest.raises(InvalidInput, match="malformed image transform"):
        ImageFit.from_record({"height": 4})
    with pytest.raises(InvalidInput, match="1 or 3 channels"):
        ImageFit(4, 4, 4)
