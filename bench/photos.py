"""Photo-folder benchmark: ingest time and cnn accuracy on mixed-size images from this machine.

The images are the Adwaita icon theme's PNGs (Debian package ``adwaita-icon-theme``, under
/usr/share/icons/Adwaita/<size>/<category>/): ~3,600 icons of six categories (actions,
devices, emotes, mimetypes, places, status), 8x8 to 512x512 pixels, in RGBA, grayscale+alpha,
palette and RGB modes; the class is the category folder. Nothing is downloaded. A share of
them (``--jpeg-share``, default 1/4) is re-encoded here as JPEG: cut to a random aspect (60-100%
of one side kept), composited over white, turned a random quarter with the EXIF orientation
tag that turns it back, so the aspect, EXIF and JPEG paths are exercised too (those are
derived from the icons, not found as such).

Figures, medians of ``--runs`` interleaved runs each:

1. ingest of the zip (the real ``nimbus.datasets.ingest.ingest``: two passes over the archive,
   every image fitted, split files written) at the default size (chosen from the data) and
   at ``--image-size``; baseline of the same run: opening and decoding every member of the
   same zip with Pillow, nothing else (the least any ingest must do);
2. the built-in cnn trained by the real trainer (default parameters but ``--epochs``) on the
   default-size version: test accuracy and training time, against the majority class and a
   logistic regression (scikit-learn) on 8x8 average-pooled pixels of the same split.

Run: .venv/bin/python bench/photos.py [--runs 3] [--epochs 5] [--image-size 64x64]
     [--train default,asked]   (the cnn on the default-size and on the asked-size version)
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import median, spread
from PIL import Image

from nimbus.datasets.domain import IngestLimits, IngestOptions, PreparedDataset
from nimbus.datasets.imagefit import parse_image_size
from nimbus.datasets.ingest import ingest
from nimbus.runtime.data import DataSplits
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train

ICONS = Path("/usr/share/icons/Adwaita")
CATEGORIES = ("actions", "devices", "emotes", "mimetypes", "places", "status")
# orientation tag -> the transpose that, applied to the upright icon, stores it so that the
# tag turns it back
_STORED = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
}


def collect(zip_path: Path, jpeg_share: float, seed: int) -> dict[str, Any]:
    """Write the icons as ``photos/<category>/<size>-<name>`` into a zip; describe them."""
    rng = random.Random(seed)
    files = sorted(path for category in CATEGORIES for path in ICONS.glob(f"*/{category}/*.png"))
    if not files:
        raise SystemExit(f"no icons under {ICONS}: install adwaita-icon-theme")
    sizes: set[str] = set()
    modes: dict[str, int] = {}
    jpegs = 0
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in files:
            size, category = path.parts[-3], path.parts[-2]
            sizes.add(size)
            data = path.read_bytes()
            name = f"photos/{category}/{size}-{path.stem}"
            if rng.random() < jpeg_share:
                data = _as_rotated_jpeg(data, rng)
                zf.writestr(name + ".jpg", data)
                jpegs += 1
            else:
                zf.writestr(name + ".png", data)
            with Image.open(io.BytesIO(data)) as image:
                modes[image.mode] = modes.get(image.mode, 0) + 1
    return {
        "images": len(files),
        "jpeg": jpegs,
        "sizes": sorted(sizes, key=lambda s: int(s.split("x")[0])),
        "modes": modes,
    }


def _as_rotated_jpeg(png: bytes, rng: random.Random) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        rgba = image.convert("RGBA")
    upright = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    # a photo's aspect: keep 60-100% of one side, centred
    width, height = upright.size
    keep = rng.uniform(0.6, 1.0)
    if rng.random() < 0.5:
        cut = round(width * keep)
        box = ((width - cut) // 2, 0, (width - cut) // 2 + cut, height)
    else:
        cut = round(height * keep)
        box = (0, (height - cut) // 2, width, (height - cut) // 2 + cut)
    upright = upright.crop(box)
    tag = rng.choice([1, 3, 6, 8])
    stored = upright.convert("RGB")
    if tag in _STORED:
        stored = stored.transpose(_STORED[tag])
    exif = Image.Exif()
    exif[0x0112] = tag
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def decode_only(zip_path: Path) -> float:
    """Seconds to open and decode every member with Pillow: the baseline."""
    start = time.perf_counter()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            with Image.open(io.BytesIO(zf.read(info))) as image:
                image.load()
    return time.perf_counter() - start


def timed_ingest(
    zip_path: Path, work: Path, size: tuple[int, int] | None
) -> tuple[float, PreparedDataset]:
    work.mkdir(parents=True)
    options = IngestOptions(image_size=size)
    start = time.perf_counter()
    prepared = ingest(zip_path, zip_path.name, options, IngestLimits(), work)
    return time.perf_counter() - start, prepared


def baselines(data: DataSplits) -> dict[str, float]:
    """Majority class and logistic regression on 8x8 pooled pixels, on the test split."""
    from sklearn.linear_model import LogisticRegression  # a baseline only, not Nimbus

    def pooled(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        cells = []
        for rows in np.array_split(np.arange(h), 8):
            for cols in np.array_split(np.arange(w), 8):
                cells.append(x[:, rows][:, :, cols].reshape(n, -1, c).mean(axis=1))
        return np.concatenate(cells, axis=1) / 255.0

    counts = np.bincount(data.train.y, minlength=len(data.classes))
    majority = float(np.mean(data.test.y == counts.argmax()))
    model = LogisticRegression(max_iter=2000)
    model.fit(pooled(np.asarray(data.train.x)), data.train.y)
    logistic = float(model.score(pooled(np.asarray(data.test.x)), data.test.y))
    return {"majority": majority, "logistic_8x8": logistic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", default="64x64")
    parser.add_argument("--jpeg-share", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train",
        default="default",
        help="versions to train the cnn on: default,asked ('' for none)",
    )
    args = parser.parse_args()
    asked = parse_image_size(args.image_size)
    with tempfile.TemporaryDirectory(prefix="nimbus-bench-photos-") as tmp:
        root = Path(tmp)
        zip_path = root / "photos.zip"
        found = collect(zip_path, args.jpeg_share, args.seed)
        print(
            f"{found['images']} images ({found['jpeg']} re-encoded as EXIF-rotated JPEG), "
            f"{zip_path.stat().st_size / 1e6:.1f} MB zip; sizes {', '.join(found['sizes'])}; "
            f"modes {found['modes']}"
        )
        times: dict[str, list[float]] = {"decode": [], "default": [], "asked": []}
        prepared: PreparedDataset | None = None
        work_default = root / "work-default"
        for run in range(args.runs):
            times["decode"].append(decode_only(zip_path))
            work = root / f"work-{run}"
            took, prepared = timed_ingest(zip_path, work, None)
            times["default"].append(took)
            if run == 0:
                work.rename(work_default)
                prepared.files = {k: work_default / v.name for k, v in prepared.files.items()}
            took, _ = timed_ingest(zip_path, root / f"asked-{run}", asked)
            times["asked"].append(took)
        assert prepared is not None
        base = median(times["decode"])
        print("\ningest (median of runs, range):")
        print(f"  decode every image only (baseline) {base:7.2f} s  ({spread(times['decode'])})")
        shape = "x".join(str(d) for d in prepared.schema["shape"])
        for key, label in (("default", f"default size {shape}"), ("asked", args.image_size)):
            value = median(times[key])
            print(
                f"  ingest at {label:<22} {value:7.2f} s  ({spread(times[key])})  "
                f"{value / base:.2f}x the baseline, {found['images'] / value:,.0f} images/s"
            )
        print(f"  source images: {json.dumps(prepared.stats['source_images'])}")

        versions = {"default": (work_default, prepared)}
        if "asked" in args.train:
            work_asked = root / "train-asked"
            versions["asked"] = (work_asked, timed_ingest(zip_path, work_asked, asked)[1])
        for key in filter(None, args.train.split(",")):
            work, version = versions[key]
            report_training(work, version, args.epochs)


def report_training(work: Path, version: PreparedDataset, epochs: int) -> None:
    """Train the cnn on a prepared version; print its accuracy next to the baselines."""
    data = DataSplits.load(
        work, version.task, version.classes, image_transform=version.schema["transform"]
    )
    shape = "x".join(str(d) for d in version.schema["shape"])
    start = time.perf_counter()
    result = train("cnn", data, {"epochs": epochs}, MemoryReporter())
    trained = time.perf_counter() - start
    arch = result.spec["arch_params"]
    print(
        f"\ncnn at {shape} (stem_pool {arch['stem_pool']}, {arch['stages']} extra stages), "
        f"{epochs} epochs on {len(data.train)} images: {trained:.1f} s"
    )
    accuracy = result.metrics["test_accuracy"]
    print(
        f"  test accuracy {accuracy:.3f} on {len(data.test)} images "
        f"(train {result.metrics['train_accuracy']:.3f}, val {result.metrics['val_accuracy']:.3f})"
    )
    for name, value in baselines(data).items():
        print(f"  baseline {name:<14} {value:.3f}  (cnn / baseline {accuracy / value:.2f}x)")


if __name__ == "__main__":
    main()
