"""idx: MNIST-style IDX files in a zip / tar / tar.gz (the SDK sends a directory as a tar).

Files are paired by prefix: ``train-images-idx3-ubyte[.gz]`` with ``train-labels-idx1-ubyte[.gz]``;
pairs whose prefix has the word ``t10k`` or ``test`` are the data's own test split. Each file is
read in bulk at its header offset: in place when it lies uncompressed in a plain tar (the
SDK's directory upload), else after a copy into the scratch directory (gunzipped on the
fly). No per-image Python work, and never all the pixels in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nimbus.datasets.archive import copy_member, iter_files
from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext
from nimbus.datasets.rows import FileRows
from nimbus.errors import InvalidDataset

IDX_NAME = re.compile(
    r"^(?P<prefix>.*?)[-_.]?(?P<kind>images|labels)[-_.]idx(?P<dims>[13])-ubyte(?P<gz>\.gz)?$"
)
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def is_idx_name(path: str) -> bool:
    """True when a member's file name follows the IDX naming (``*-images-idx3-ubyte[.gz]``)."""
    return IDX_NAME.match(path.rsplit("/", 1)[-1].lower()) is not None


@dataclass(frozen=True)
class _Span:
    """Where an IDX file's bytes lie: ``size`` bytes at ``offset`` in ``path``."""

    path: Path
    offset: int
    size: int


@dataclass
class _Pair:
    images: str = ""
    labels: str = ""
    images_span: _Span | None = None
    labels_span: _Span | None = None

    @property
    def is_test(self) -> bool:
        """``t10k-*``, ``test-*`` and ``emnist-letters-test-*`` are test files."""
        match = IDX_NAME.match(self.images.rsplit("/", 1)[-1].lower())
        words = re.split(r"[-_.]", match["prefix"]) if match else []
        return bool({"t10k", "test"} & set(words))


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Pair and extract the IDX files of an archive; check each and describe its rows."""
    pairs: dict[str, _Pair] = {}
    for number, member in enumerate(iter_files(source, ctx.limits, ctx.display)):
        match = IDX_NAME.match(member.path.rsplit("/", 1)[-1].lower())
        if match is None:
            continue  # READMEs and the like travel with MNIST copies; they are not data
        kind = match["kind"]
        if (kind == "images") != (match["dims"] == "3"):
            raise InvalidDataset(
                f"archive {ctx.display!r}: member {member.path!r}: {kind} files are "
                f"idx{'3' if kind == 'images' else '1'}, not idx{match['dims']}"
            )
        folder = member.path.rsplit("/", 1)[0] if "/" in member.path else ""
        pair = pairs.setdefault(f"{folder}/{match['prefix']}", _Pair())
        if getattr(pair, kind):
            raise InvalidDataset(
                f"archive {ctx.display!r}: members {getattr(pair, kind)!r} and "
                f"{member.path!r} are both {kind} of one set"
            )
        if member.data_offset is not None and not match["gz"]:
            span = _Span(source, member.data_offset, member.size)
        else:
            dest = ctx.scratch_file(f"idx-{number}.bin")
            span = _Span(dest, 0, copy_member(member, dest, gunzip=bool(match["gz"])))
        setattr(pair, kind, member.path)
        setattr(pair, f"{kind}_span", span)
    if not pairs:
        raise InvalidDataset(
            f"archive {ctx.display!r} holds no IDX files "
            "(*-images-idx3-ubyte[.gz] with *-labels-idx1-ubyte[.gz])"
        )
    return _assemble([pairs[key] for key in sorted(pairs)], ctx)


def _assemble(pairs: list[_Pair], ctx: ReadContext) -> RawDataset:
    parts: list[FileRows] = []
    labels: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for pair in pairs:
        if not pair.images or not pair.labels:
            have, missing = (pair.images, "labels") if pair.images else (pair.labels, "images")
            raise InvalidDataset(
                f"archive {ctx.display!r}: member {have!r} has no matching {missing} file"
            )
        assert pair.images_span is not None and pair.labels_span is not None
        images = load_idx(pair.images_span, "images", pair.images, ctx)
        marks = load_idx(pair.labels_span, "labels", pair.labels, ctx)
        if len(images) != len(marks):
            raise InvalidDataset(
                f"archive {ctx.display!r}: member {pair.images!r} has {len(images)} images but "
                f"{pair.labels!r} has {len(marks)} labels"
            )
        if parts and images.shape[1:] != parts[0].shape[1:3]:
            raise InvalidDataset(
                f"archive {ctx.display!r}: member {pair.images!r} holds "
                f"{images.shape[2]}x{images.shape[1]} images, unlike the other image files"
            )
        parts.append(images.with_row_shape(*images.shape[1:], 1))
        labels.append(marks.read(0, len(marks)))  # uint8: 1 byte a label, not 8
        test.append(np.full(len(marks), pair.is_test))
    mask = np.concatenate(test)
    return RawDataset(
        task=Task.IMAGE,
        x_parts=parts,
        labels=np.concatenate(labels),
        schema={"shape": list(parts[0].shape[1:]), "dtype": "uint8"},
        test_mask=mask if mask.any() and not mask.all() else None,
    )


def load_idx(span: _Span, kind: str, member: str, ctx: ReadContext) -> FileRows:
    """The rows of an unsigned-byte IDX file, after checking its magic, dims and length."""
    where = f"archive {ctx.display!r}: member {member!r}"
    ndim = 3 if kind == "images" else 1
    with span.path.open("rb") as f:
        f.seek(span.offset)
        header = f.read(min(4 + 4 * ndim, span.size))
    if len(header) < 4:
        raise InvalidDataset(f"{where} is too short to be an IDX file")
    magic = int.from_bytes(header[:4], "big")
    if magic != _MAGIC[kind]:
        raise InvalidDataset(
            f"{where} has IDX magic number 0x{magic:08x}; IDX {kind} must start with "
            f"0x{_MAGIC[kind]:08x} (unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    if len(header) < 4 + 4 * ndim:
        raise InvalidDataset(f"{where} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(header[4:], dtype=">u4"))
    if kind == "images":
        pixels = dims[1] * dims[2]
        if pixels == 0 or pixels > ctx.limits.max_image_pixels:
            raise InvalidDataset(
                f"{where} declares {dims[2]}x{dims[1]} images; need 1 to "
                f"{ctx.limits.max_image_pixels} pixels each"
            )
    expected = len(header) + int(np.prod(dims, dtype=np.int64))
    actual = span.size
    if actual < expected:
        raise InvalidDataset(
            f"{where} is truncated: its header promises {expected} bytes, it has {actual}"
        )
    if actual > expected:
        raise InvalidDataset(
            f"{where} has {actual - expected} bytes past the data its header describes"
        )
    return FileRows(span.path, span.offset + len(header), np.dtype(np.uint8), dims)
