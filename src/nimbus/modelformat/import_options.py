"""The options of ``nimbus models import`` (docs/import.md): the task, the class names and,
for images, how ``/predict`` turns a photo into the model's input. Checked here, where they
are parsed, before a byte of the model is read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput

LAYOUTS = ("NCHW", "NHWC")
MAX_CLASSES = 100_000
MAX_CLASS_CHARS = 200
MAX_SIDE = 4096
_TASKS = {"tabular": Task.TABULAR, "image": Task.IMAGE, "text": Task.TEXT}


@dataclass(frozen=True)
class ImportOptions:
    """What the person says of a model trained elsewhere: its task and class names and, for
    images, how ``/predict`` turns a photo into its input (size, layout, scale, mean, std)."""

    task: Task
    classes: tuple[str, ...]
    layout: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise InvalidInput("no classes: give the class names (--classes)", field="classes")
        if len(self.classes) > MAX_CLASSES:
            raise InvalidInput(f"more than {MAX_CLASSES} classes", field="classes")
        for name in self.classes:
            if not name.strip() or len(name) > MAX_CLASS_CHARS:
                raise InvalidInput(
                    f"invalid class name {name[:40]!r}: 1 to {MAX_CLASS_CHARS} characters, "
                    "not blank",
                    field="classes",
                )
        if len(set(self.classes)) != len(self.classes):
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})[:5]
            raise InvalidInput(f"class names given twice: {twice}", field="classes")
        image_only = {
            "input_layout": self.layout,
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "size": self.size,
        }
        if self.task is not Task.IMAGE:
            given = [k for k, v in image_only.items() if v is not None]
            if given:
                raise InvalidInput(
                    f"{', '.join(given)} apply to image models only (--task image-classification)",
                    field=given[0],
                )
        if self.layout is not None and self.layout not in LAYOUTS:
            raise InvalidInput(
                f"invalid input layout {self.layout!r}: NCHW or NHWC", field="input_layout"
            )
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise InvalidInput("scale must be a finite number above 0", field="scale")
        for key, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and (
                not values or not all(math.isfinite(v) for v in values) or len(values) > 4
            ):
                raise InvalidInput(f"{key} must be 1 to 4 finite numbers", field=key)
        if self.std is not None and min(self.std) <= 0:
            raise InvalidInput("std must be above 0", field="std")
        if self.size is not None and not all(0 < s <= MAX_SIDE for s in self.size):
            raise InvalidInput(f"size must be HxW, each 1 to {MAX_SIDE}", field="size")

    @classmethod
    def parse(
        cls,
        *,
        task: str,
        classes: Sequence[str],
        layout: str | None = None,
        scale: str | None = None,
        mean: str | None = None,
        std: str | None = None,
        size: str | None = None,
    ) -> ImportOptions:
        """The options as the CLI and the query string give them: ``task`` (``image``,
        ``text``, ``tabular`` or the full task names), ``scale`` a number or a fraction
        (``1/255``), ``mean`` and ``std`` comma-separated numbers, ``size`` ``HxW``."""
        found = _TASKS.get(task)
        if found is None:
            try:
                found = Task(task)
            except ValueError:
                known = ", ".join([*(t.value for t in Task), *_TASKS])
                raise InvalidInput(f"invalid task {task!r}: one of {known}", field="task") from None
        return cls(
            task=found,
            classes=tuple(classes),
            layout=layout.upper() if layout is not None else None,
            scale=None if scale is None else _number(scale, "scale"),
            mean=None if mean is None else _numbers(mean, "mean"),
            std=None if std is None else _numbers(std, "std"),
            size=None if size is None else _size(size),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.value,
            "classes": list(self.classes),
            "layout": self.layout,
            "scale": self.scale,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "size": None if self.size is None else list(self.size),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImportOptions:
        def floats(key: str) -> tuple[float, ...] | None:
            value = raw.get(key)
            return None if value is None else tuple(float(v) for v in value)

        size = raw.get("size")
        return cls(
            task=Task(raw["task"]),
            classes=tuple(str(c) for c in raw["classes"]),
            layout=raw.get("layout"),
            scale=None if raw.get("scale") is None else float(raw["scale"]),
            mean=floats("mean"),
            std=floats("std"),
            size=None if size is None else (int(size[0]), int(size[1])),
        )


def _number(text: str, field: str) -> float:
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise InvalidInput(
            f"invalid {field} {text[:40]!r}: a number or a fraction such as 1/255", field=field
        ) from None
    return value


def _numbers(text: str, field: str) -> tuple[float, ...]:
    return tuple(_number(part, field) for part in text.split(",") if part.strip())


def _size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.strip().isdigit() or not width.strip().isdigit():
        raise InvalidInput(f"invalid size {text[:40]!r}: HxW, e.g. 224x224", field="size")
    return int(height), int(width)
