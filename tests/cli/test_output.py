"""Rendering and progress helpers, without a server."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from nimbus.cli import common
from nimbus.cli.render import datasets_table, tokens_table, version_table
from nimbus.wire.base import parse
from nimbus.wire.datasets import DatasetSummary, DatasetVersion
from nimbus.wire.tokens import Token

VERSION_BODY = {
    "dataset": "pets",
    "version": 2,
    "task": "image-classification",
    "format": "image-folder",
    "classes": ["[cat]", "dog"],
    "num_classes": 2,
    "size_bytes": 2048,
    "content_hash": "c" * 64,
    "source_hash": "d" * 64,
    "split_source": "seeded",
    "splits": {
        "train": {"size": 7, "per_class": {"[cat]": 3, "dog": 4}},
        "test": {"size": 2, "per_class": {"[cat]": 1, "dog": 1}},
    },
    "schema": {"shape": [32, 32, 3], "dtype": "uint8"},
    "stats": {},
    "files": {"source": {"key": "sha256/dd/" + "d" * 64, "size": 2048, "name": "pets.zip"}},
    "created_at": "2024-01-01T00:00:00Z",
    "created_by": "tok_1",
}
VERSION = parse(DatasetVersion, VERSION_BODY)


def render(renderable: object) -> str:
    out = Console(file=io.StringIO(), width=120, color_system=None)
    out.print(renderable)
    assert isinstance(out.file, io.StringIO)
    return out.file.getvalue()


def test_version_table_shows_the_facts_and_the_counts() -> None:
    text = render(version_table(VERSION))
    for fact in (
        "pets:2",
        "image-classification",
        "32x32x3 uint8",
        "2.0 kB",
        "c" * 64,
        "pets.zip",
        "seeded",
        "tok_1",
        "2024-01-01T00:00:00Z",
    ):
        assert fact in text, fact
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["[cat]"] == ["3", "1"]  # brackets in a class name are not markup
    assert rows["dog"] == ["4", "1"]
    assert rows["total"] == ["7", "2"]


def test_tables_write_times_as_the_api_does() -> None:
    """Human output shows times exactly as the JSON has them (ISO-8601 UTC with Z)."""
    summary = {"name": "pets", "created_at": "2024-01-01T00:00:00.5Z", "latest_version": 2}
    text = render(datasets_table([parse(DatasetSummary, {**summary, "versions": 1})]))
    assert "2024-01-01T00:00:00.500000Z" in text and "+00:00" not in text
    token = {
        "id": "tok_9",
        "name": "ci",
        "role": "viewer",
        "tenant": "acme",
        "created_at": "2024-01-01T00:00:00Z",
        "expires_at": None,
        "revoked_at": "2024-01-02T00:00:00Z",
    }
    table = render(tokens_table([parse(Token, token)]))
    row = next(line for line in table.splitlines() if "tok_9" in line).split()
    assert row == ["tok_9", "ci", "viewer", "acme", "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]


def test_human_bytes() -> None:
    assert [common.human_bytes(n) for n in (None, 1, 1500, 3 * 10**9)] == [
        "-",
        "1 byte",
        "1.5 kB",
        "3.0 GB",
    ]


def test_progress_bar_starts_with_the_first_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = io.StringIO()
    terminal = Console(file=sink, force_terminal=True, width=100)
    monkeypatch.setattr(common, "err_console", lambda: terminal)
    with common.transfer("uploading x.zip", True, after="preparing"):
        pass
    assert sink.getvalue() == ""  # nothing sent (e.g. the file was missing): no bar
    with common.transfer("uploading x.zip", True, after="preparing") as progress:
        progress(5, 10)
        progress(10, 10)
    assert "preparing" in sink.getvalue() and "10 bytes" in sink.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(common, "err_console", lambda: Console(file=quiet, force_terminal=False))
    with common.transfer("uploading", True) as progress:
        progress(10, 10)
    assert quiet.getvalue() == ""  # pipes and logs get no bar
