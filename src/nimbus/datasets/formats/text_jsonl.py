"""text-jsonl: one JSON object per line with a string ``text`` and a ``label``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nimbus.datasets.domain import Task
from nimbus.datasets.formats.base import RawDataset, ReadContext, mixed_labels, to_fixed_unicode
from nimbus.errors import InvalidDataset


def read(source: Path, ctx: ReadContext) -> RawDataset:
    """Texts and labels (ints or strings) line by line; blank lines are skipped."""
    label = ctx.options.label or "label"
    texts: list[str] = []
    labels: list[int | str] = []
    groups: list[str] = []
    group = ctx.options.group_column
    try:
        with source.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                text, value, member = _parse(line, number, label, group, ctx)
                texts.append(text)
                labels.append(value)
                groups.append(member)
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{ctx.display!r} is not UTF-8 text ({exc})") from exc
    array = to_fixed_unicode(texts, ctx)
    schema = {"dtype": "str", "max_length": array.dtype.itemsize // 4, "label": label}
    found = np.array(groups, dtype=str) if group is not None else None
    return RawDataset(Task.TEXT, [array], mixed_labels(labels), schema, groups=found)


def _parse(
    line: str, number: int, label: str, group: str | None, ctx: ReadContext
) -> tuple[str, int | str, str]:
    where = f"{ctx.display!r} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidDataset(f"{where} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise InvalidDataset(f"{where} is not a JSON object")
    text, value = record.get("text"), record.get(label)
    if not isinstance(text, str):
        raise InvalidDataset(f"{where} has no string 'text'")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidDataset(f"{where} has no {label!r} that is an integer or a string")
    member = record.get(group) if group is not None else ""
    if isinstance(member, bool) or not isinstance(member, int | str):
        raise InvalidDataset(f"{where} has no {group!r} that is an integer or a string")
    return text, value, str(member)
