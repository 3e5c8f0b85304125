"""The ingest pipeline: an uploaded file in, training-ready split files and metadata out.

validate -> prepare, pure of HTTP and SQL: detect the format, read it through its reader
(archive safety and pixel limits included), turn labels into classes, plan the splits, and
write each split as memory-mappable ``.npy`` files in the work directory (summary statistics
are gathered on the way).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from nimbus.datasets.detect import detect_format, parse_enum
from nimbus.datasets.domain import IngestLimits, IngestOptions, PreparedDataset, Task
from nimbus.datasets.formats import READERS, ReadContext
from nimbus.datasets.formats.base import RawDataset
from nimbus.datasets.labels import encode_labels
from nimbus.datasets.prepare import write_splits
from nimbus.datasets.splits import plan_splits, split_info, validate_fractions
from nimbus.datasets.stats import StatsAccumulator
from nimbus.errors import InvalidDataset


def ingest(
    source: Path,
    filename: str,
    options: IngestOptions,
    limits: IngestLimits,
    workdir: Path,
) -> PreparedDataset:
    """Validate and prepare one upload; raise InvalidDataset (400) naming what is wrong.

    ``source`` is the uploaded file, ``filename`` the user's name for it (a hint, may be
    empty) and ``workdir`` an empty directory the caller removes afterwards. Every file this
    writes lies under ``workdir``; the returned ``files`` are ``{split}_x.npy`` and
    ``{split}_y.npy`` there, with their ``digests`` computed as they were written.
    """
    validate_fractions(options.val_fraction, options.test_fraction)
    wanted = parse_enum(Task, options.task, "task") if options.task is not None else None
    if not source.is_file():
        raise InvalidDataset(f"upload {filename or source.name!r} is not a file")
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    fmt = detect_format(source, filename, options, limits)
    ctx = ReadContext(filename or source.name, options, limits, scratch)
    raw = READERS[fmt](source, ctx)
    if wanted is not None and raw.task is not wanted:
        raise InvalidDataset(
            f"{ctx.display!r} holds {raw.task} data, not {wanted} as the upload asked"
        )
    if raw.size == 0:
        raise InvalidDataset(f"{ctx.display!r} holds no examples")
    classes, y = encode_labels(raw.labels, ctx.display)
    if len(classes) < 2:
        raise InvalidDataset(
            f"{ctx.display!r} has a single class {classes[0]!r}; classification needs at least 2"
        )
    # Held through the whole ingest, the class indices are kept as narrow as the number of
    # classes allows: 1 byte an example rather than 8 (millions of examples for big sets).
    y = y.astype(np.min_scalar_type(len(classes) - 1))
    plan = plan_splits(
        y,
        len(classes),
        seed=options.seed,
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
        given_test=raw.test_mask,
    )
    if len(plan.indices["train"]) == 0:
        raise InvalidDataset(f"{ctx.display!r} leaves no examples for training")
    groups, group_names = _groups(raw, options, ctx.display)
    schema = dict(raw.schema)
    if group_names is not None:
        schema["groups"] = {"column": options.group_column, "values": group_names}
    summary = StatsAccumulator(raw.task, raw.schema, tuple(raw.x_parts[0].shape[1:]))
    written = write_splits(
        raw.x_parts, raw.dtype, y, plan, workdir, observe=summary.add, groups=groups
    )
    files = {name: file.path for name, file in written.items()}
    stats = {"examples": raw.size, **summary.result(), **raw.stats}
    if groups is not None and group_names is not None:
        stats["groups"] = {
            split: {
                group_names[g]: int(n)
                for g, n in enumerate(np.bincount(groups[idx], minlength=len(group_names)))
            }
            for split, idx in plan.indices.items()
        }
    prepared = PreparedDataset(
        task=raw.task,
        format=fmt,
        classes=classes,
        splits=split_info(y, plan, classes),
        schema=schema,
        stats=stats,
        files=files,
        digests={name: file.sha256 for name, file in written.items()},
        split_source=plan.source,
    )
    del raw  # drop the memory maps of the scratch files before removing them
    shutil.rmtree(scratch, ignore_errors=True)
    return prepared


MAX_GROUPS = 1000  # a sensitive attribute with more values is an identifier, not a group


def _groups(
    raw: RawDataset, options: IngestOptions, display: str
) -> tuple[np.ndarray | None, list[str] | None]:
    """Each example's group index and the groups' names (sorted), when the upload names a
    group column."""
    if options.group_column is None:
        return None, None
    if raw.groups is None:
        raise InvalidDataset(
            f"{display!r} is {raw.task} data without groups: a group column is a column of "
            "tabular or text data (CSV, Parquet, JSON lines), or of an image folder's "
            "groups.csv"
        )
    names, index = np.unique(raw.groups, return_inverse=True)
    if len(names) > MAX_GROUPS:
        raise InvalidDataset(
            f"{display!r}: group column {options.group_column!r} has {len(names)} distinct "
            f"values, over {MAX_GROUPS}"
        )
    return index.astype(np.int64), [str(n) for n in names]
