"""Photo folders as people have them: sizes, modes and orientations all mixed."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# Each class has its own hue; every photo its own size, mode, format and noise.
HUES = {"red": (200, 40, 40), "blue": (40, 60, 200)}
KINDS = ("jpeg", "png-gray", "png-rgba", "png-palette", "jpeg-rotated", "png-gray16")


def photo(hue: tuple[int, int, int], index: int, seed: int = 0) -> tuple[str, bytes]:
    """One photo of class colour ``hue``: (file suffix, bytes); kind and size vary with
    ``index``."""
    rng = np.random.default_rng(seed * 10_000 + index)
    width, height = int(rng.integers(20, 120)), int(rng.integers(20, 120))
    base = np.array(hue, np.float64) + rng.normal(0, 25, (height, width, 3))
    base[: height // 3] *= 0.6  # some structure: a darker top third
    pixels = np.clip(base, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    kind = KINDS[index % len(KINDS)]
    out = io.BytesIO()
    if kind == "jpeg":
        image.save(out, "JPEG", quality=90)
    elif kind == "png-gray":
        image.convert("L").save(out, "PNG")
    elif kind == "png-rgba":
        alpha = Image.fromarray(rng.integers(128, 256, (height, width), dtype=np.uint8))
        rgba = image.convert("RGBA")
        rgba.putalpha(alpha)
        rgba.save(out, "PNG")
    elif kind == "png-palette":
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(out, "PNG")
    elif kind == "jpeg-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways, shown upright
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=90, exif=exif)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.frombytes("I;16", (width, height), gray.astype("<u2").tobytes()).save(out, "PNG")
    return (".jpg" if kind.startswith("jpeg") else ".png"), out.getvalue()


def photo_members(per_class: int, seed: int = 0) -> dict[str, bytes]:
    """``photos/<class>/<i><suffix>`` -> bytes, in a fixed order."""
    members = {}
    for name, hue in HUES.items():
        for i in range(per_class):
            suffix, data = photo(hue, i, seed + len(name))
            members[f"photos/{name}/{i}{suffix}"] = data
    return members


def photo_zip(path: Path, members: dict[str, bytes]) -> Path:
    """Write ``members`` as a zip at ``path``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path
