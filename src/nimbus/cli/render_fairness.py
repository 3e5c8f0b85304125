"""The fairness block of an evaluation (runtime/fairness.py) for people: metrics per group
and the disparities between groups, per class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

DISPARITIES = (
    ("demographic_parity_difference", "worst demographic parity difference"),
    ("equalized_odds_difference", "worst equalized odds difference"),
)


def _num(value: Any) -> Text:
    return Text(f"{value:.4f}" if isinstance(value, int | float) else "-")


def fairness_view(block: dict[str, Any]) -> RenderableType:
    """Per group: examples, accuracy, then each class's selection rate and recall; per
    class: the demographic parity and equalized odds differences between the groups."""
    groups: dict[str, Any] = block.get("groups") or {}
    first: dict[str, Any] = next(iter(groups.values()), {})
    classes = [str(c) for c in first.get("selection_rate") or {}]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"fairness by {block.get('group_column')} (test split)",
        title_justify="left",
    )
    for column in ("group", "examples", "accuracy"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for name in classes:
        table.add_column(f"selected {name}", justify="right")
        table.add_column(f"recall {name}", justify="right")
    for group, row in groups.items():
        cells = [Text(str(group)), Text(str(row.get("count"))), _num(row.get("accuracy"))]
        for name in classes:
            cells += [_num(row["selection_rate"].get(name)), _num(row["recall"].get(name))]
        table.add_row(*cells)
    gaps = Table(box=box.SIMPLE_HEAD, title="disparities between groups", title_justify="left")
    gaps.add_column("class")
    gaps.add_column("demographic parity diff", justify="right")
    gaps.add_column("equalized odds diff", justify="right")
    for name, row in (block.get("disparities") or {}).items():
        gaps.add_row(
            Text(str(name)),
            _num(row.get("demographic_parity_difference")),
            _num(row.get("equalized_odds_difference")),
        )
    return Group(table, gaps)


def worst(evaluations: Sequence[dict[str, Any] | None], key: str) -> list[float | None]:
    """Each evaluation's largest ``key`` disparity over the classes (None without a
    fairness block)."""
    out: list[float | None] = []
    for evaluation in evaluations:
        block = (evaluation or {}).get("fairness") or {}
        values = [row.get(key) for row in (block.get("disparities") or {}).values()]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        out.append(max(numbers) if numbers else None)
    return out
