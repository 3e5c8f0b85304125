"""Rich tables for API objects, shared by the commands and ``nimbus demo``.

User-provided strings go in as :class:`rich.text.Text` so brackets in class names are never
read as markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from nimbus.cli.common import human_bytes

MAX_CLASS_ROWS = 40


def _t(value: Any) -> Text:
    return Text("-" if value is None or value == "" else str(value))


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _schema(schema: Any) -> str:
    if isinstance(schema, dict) and {"shape", "dtype"} <= schema.keys():
        shape = "x".join(str(d) for d in schema["shape"])
        rest = {k: v for k, v in schema.items() if k not in ("shape", "dtype")}
        return f"{shape} {schema['dtype']}" + (f"  {_short(rest)}" if rest else "")
    return _short(schema)


def version_table(version: dict[str, Any]) -> RenderableType:
    """A dataset version: its facts, then a class x split table of counts."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    classes = [str(c) for c in version.get("classes") or []]
    source = (version.get("files") or {}).get("source") or {}
    rows: list[tuple[str, Any]] = [
        ("dataset", f"{version.get('dataset')}:{version.get('version')}"),
        ("task", version.get("task")),
        ("format", version.get("format")),
        ("classes", f"{len(classes)}: {_short(', '.join(classes), 80)}" if classes else None),
        ("schema", _schema(version.get("schema"))),
        ("size", human_bytes(version.get("size_bytes"))),
        ("content hash", version.get("content_hash")),
        (
            "source",
            f"{source.get('name', '-')} ({human_bytes(source.get('size'))}), "
            f"sha256 {str(version.get('source_hash', '-'))[:16]}…",
        ),
        ("split source", version.get("split_source")),
        ("stats", _short(version["stats"]) if version.get("stats") else None),
        ("created", f"{version.get('created_at', '-')} by {version.get('created_by') or '-'}"),
    ]
    for key, value in rows:
        facts.add_row(key, _t(value))
    return Group(facts, "", splits_table(version.get("splits") or {}, classes))


def splits_table(splits: dict[str, Any], classes: Sequence[str]) -> Table:
    """Rows are classes, columns splits; the last row holds each split's size."""
    names = list(splits)
    table = Table(box=box.SIMPLE_HEAD, title="examples per split and class", title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    shown = list(classes)[:MAX_CLASS_ROWS]
    for cls in shown:
        table.add_row(_t(cls), *(_t((splits[n].get("per_class") or {}).get(cls, 0)) for n in names))
    if len(classes) > len(shown):
        table.add_row(Text(f"… {len(classes) - len(shown)} more classes"), *("" for _ in names))
    table.add_section()
    table.add_row(Text("total", style="bold"), *(_t(splits[n].get("size")) for n in names))
    return table


def datasets_table(datasets: Sequence[dict[str, Any]]) -> Table:
    """``GET /datasets``: one row per dataset."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "latest", "versions", "created"):
        table.add_column(column)
    for item in datasets:
        versions = item.get("versions")
        count = len(versions) if isinstance(versions, list) else versions
        table.add_row(
            _t(item.get("name")),
            _t(item.get("latest_version")),
            _t(count),
            _t(item.get("created_at")),
        )
    return table


def tokens_table(tokens: Sequence[dict[str, Any]]) -> Table:
    """``GET /tokens``: one row per token (secrets are never listed)."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "name", "role", "tenant", "created", "revoked"):
        table.add_column(column)
    for tok in tokens:
        table.add_row(
            *(_t(tok.get(k)) for k in ("id", "name", "role", "tenant", "created_at", "revoked_at"))
        )
    return table
