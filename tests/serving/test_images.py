"""Photos fitted at serving time: the spec's transform, checked when a replica loads it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nimbus.datasets.imagefit import ImageFit
from nimbus.errors import InvalidInput, PayloadTooLarge
from nimbus.serving.images import fit_upload
from nimbus.serving.predictor import Predictor
from tests.serving.conftest import IMAGE_SHAPE


def with_transform(source: Path, target: Path, transform: Any) -> Path:
    shutil.copytree(source, target)
    spec = json.loads((target / "spec.json").read_text())
    spec["preprocessing"]["transform"] = transform
    (target / "spec.json").write_text(json.dumps(spec))
    return target


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, "JPEG")
    return out.getvalue()


def test_a_replica_fits_photos_with_the_spec_transform(
    image_model_dir: Path, tmp_path: Path
) -> None:
    h, w, c = IMAGE_SHAPE
    record = ImageFit(h, w, c, "pad").record()
    predictor = Predictor.load(with_transform(image_model_dir, tmp_path / "m", record))
    example = predictor.example_from_body(jpeg((60, 20)))
    want = fit_upload(jpeg((60, 20)), ImageFit(h, w, c, "pad"), max_pixels=10**6)
    assert example.shape == (1, h, w, c) and np.array_equal(example[0], want)
    # pad: a wide photo leaves black bands above and below
    assert (example[0, 0] == 0).all() and (example[0, 3] > 0).all()


@pytest.mark.parametrize(
    ("transform", "problem"),
    [
        (ImageFit(8, 8, 1).record(), "makes 8x8x1 images but the input is [6, 6, 1]"),
        ({**ImageFit(6, 6, 1).record(), "fit": "stretch"}, "unknown image fit"),
        ("crop", "must be an object"),
    ],
)
def test_a_transform_that_does_not_fit_the_model_is_refused_at_load(
    image_model_dir: Path, tmp_path: Path, transform: Any, problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Predictor.load(with_transform(image_model_dir, tmp_path / "m", transform))


def test_fit_upload_words_its_refusals() -> None:
    fit = ImageFit(6, 6, 3)
    with pytest.raises(PayloadTooLarge, match="2400 pixels, above the limit of 100"):
        fit_upload(jpeg((60, 40)), fit, max_pixels=100)
    with pytest.raises(InvalidInput, match="not a PNG or JPEG"):
        fit_upload(b"GIF89a....", fit, max_pixels=100)
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        fit_upload(jpeg((60, 40))[:200], fit, max_pixels=10**6)
