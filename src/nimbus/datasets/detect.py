"""Which format an upload is in: magic bytes first, then the file name, then content."""

from __future__ import annotations

import csv
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import TypeVar

from nimbus.datasets.archive import iter_files, sniff_archive
from nimbus.datasets.domain import Format, IngestLimits, IngestOptions, Task
from nimbus.datasets.formats.idx import is_idx_name
from nimbus.datasets.formats.image_folder import IMAGE_SUFFIXES
from nimbus.errors import InvalidDataset, InvalidInput

E = TypeVar("E", Format, Task)

PEEK_MEMBERS = 1000  # archive members looked at before giving up on telling the format
PEEK_BYTES = 64 * 1024
_NPZ_MEMBERS = frozenset({"x.npy", "y.npy", "x_train.npy", "y_train.npy"})


def detect_format(
    source: Path, filename: str, options: IngestOptions, limits: IngestLimits
) -> Format:
    """The upload's format, unless ``options.format`` already says; InvalidDataset if unknown."""
    if options.format is not None:
        return parse_enum(Format, options.format, "format")
    display = filename or source.name
    name = filename.lower()
    kind = sniff_archive(source)
    if kind is not None:
        return _archive_format(source, name, display, limits)
    with source.open("rb") as f:
        head = f.read(PEEK_BYTES)
    if head.startswith(b"PAR1"):
        return Format.PARQUET
    if head.startswith(b"\x93NUMPY"):
        raise InvalidDataset(f"{display!r} is a bare .npy; upload an .npz with arrays x and y")
    if head.startswith(b"\x1f\x8b"):
        raise InvalidDataset(f"{display!r} is gzip data but not a tar.gz archive")
    text = _decode(head)
    if text is None or not text.strip():
        raise InvalidDataset(
            f"cannot tell the format of {display!r}: it is empty, or neither an archive, "
            "Parquet, nor UTF-8 CSV or JSON Lines text; pass a format"
        )
    if name.endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{"):
        return Format.TEXT_JSONL
    return _csv_format(text, options)


def parse_enum(kind: type[E], value: str, what: str) -> E:
    """``value`` (an enum member or its string) as a member of ``kind``; else a 400."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InvalidInput(f"unknown {what} {value!r}; choose one of {choices}") from None


def _archive_format(source: Path, name: str, display: str, limits: IngestLimits) -> Format:
    if name.endswith(".npz"):
        return Format.NPZ
    with closing(iter_files(source, limits, display)) as members:
        for member in islice(members, PEEK_MEMBERS):
            base = member.path.rsplit("/", 1)[-1].lower()
            if is_idx_name(base):
                return Format.IDX
            if base in _NPZ_MEMBERS:
                return Format.NPZ
            if base.endswith(IMAGE_SUFFIXES):
                return Format.IMAGE_FOLDER
    raise InvalidDataset(
        f"cannot tell the format of archive {display!r}: it holds no images, IDX files or "
        ".npy arrays among its first members; pass a format"
    )


def _decode(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    for cut in range(4):  # the peek may end inside a multi-byte character
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _csv_format(text: str, options: IngestOptions) -> Format:
    task = parse_enum(Task, options.task, "task") if options.task is not None else None
    if task is Task.TEXT:
        return Format.TEXT_CSV
    if task is Task.TABULAR:
        return Format.TABULAR_CSV
    header = next(csv.reader([text.lstrip("\ufeff").splitlines()[0]]), [])
    columns = {column.strip() for column in header}
    return Format.TEXT_CSV if "text" in columns else Format.TABULAR_CSV
