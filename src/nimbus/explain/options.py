"""What an explanation is asked for with, checked before any work: the method, the target
class, and the method's bounded knobs (a request can never ask for unbounded work)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from nimbus.errors import InvalidInput

INTEGRATED_GRADIENTS = "integrated_gradients"
OCCLUSION = "occlusion"
SHAPLEY = "shapley"
SMOOTHGRAD = "smoothgrad"
METHODS: dict[str, tuple[str, ...]] = {  # by the model's input kind; the first is the default
    "image": (INTEGRATED_GRADIENTS, OCCLUSION, SMOOTHGRAD),
    "text": (INTEGRATED_GRADIENTS, OCCLUSION),
    "tabular": (SHAPLEY, INTEGRATED_GRADIENTS),
}
# For a model served from its ONNX graph alone (no PyTorch weights: no gradients), the
# methods that only run the model forward; the default per kind.
GRADIENT_FREE: dict[str, str] = {"image": OCCLUSION, "text": OCCLUSION, "tabular": SHAPLEY}
NEEDS_GRADIENTS = (INTEGRATED_GRADIENTS, SMOOTHGRAD)
BASELINES: dict[str, tuple[str, ...]] = {  # named baselines; images also take a pixel value
    "image": ("black", "white", "mean"),
    "text": ("padding",),
    "tabular": ("mean", "zeros"),
}
MAX_STEPS = 256
MAX_SAMPLES = 200
MAX_WINDOW = 64


@dataclass(frozen=True)
class ExplainOptions:
    method: str | None = None  # None: the kind's default
    target: int | None = None  # a class index; None: each example's predicted class
    steps: int = 32  # Integrated Gradients: points on the path from the baseline
    baseline: str | float | None = None  # None: the kind's first named baseline
    window: int = 4  # occlusion: the square patch's side, in pixels
    stride: int | None = None  # occlusion: None is the window (patches side by side)
    samples: int = 25  # Shapley sampling: feature permutations; SmoothGrad: noisy copies

    def method_for(self, kind: str, gradients: bool = True) -> str:
        """The method asked for, else the kind's default (one that needs no gradients
        when the model gives none)."""
        return self.method or (METHODS[kind][0] if gradients else GRADIENT_FREE[kind])


def parse_options(kind: str, given: Mapping[str, Any], classes: Sequence[str]) -> ExplainOptions:
    """The options from a request's ``parameters`` (unknown keys are refused), checked for
    a model of input ``kind`` with these ``classes``: every refusal names its field. The
    target is a class's index or its name."""
    if kind not in METHODS:
        raise InvalidInput(f"no explanation for {kind!r} inputs")
    known = {f.name for f in fields(ExplainOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidInput(
            f"unknown explain parameter {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    method = given.get("method")
    if method is not None and method not in METHODS[kind]:
        raise InvalidInput(
            f"method {method!r} does not explain {kind} inputs (one of {', '.join(METHODS[kind])})"
        )
    target = _target(given.get("target"), classes)
    steps = _int(given, "steps", 32, 1, MAX_STEPS)
    window = _int(given, "window", 4, 1, MAX_WINDOW)
    stride = _optional_int(given, "stride", 1, MAX_WINDOW)
    samples = _int(given, "samples", 25, 1, MAX_SAMPLES)
    return ExplainOptions(
        method=method,
        target=target,
        steps=steps,
        baseline=_baseline(kind, given.get("baseline")),
        window=window,
        stride=stride,
        samples=samples,
    )


def _target(value: Any, classes: Sequence[str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in classes:
        return list(classes).index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    raise InvalidInput(
        f"target {value!r} is neither a class ({shown}) nor a class index from 0 to "
        f"{len(classes) - 1}",
        field="target",
    )


def _baseline(kind: str, value: Any) -> str | float | None:
    if value is None:
        return None
    if isinstance(value, str) and value in BASELINES[kind]:
        return value
    pixel = kind == "image" and isinstance(value, int | float) and not isinstance(value, bool)
    if pixel and math.isfinite(value) and 0 <= value <= 255:
        return float(value)
    also = " or a pixel value 0..255" if kind == "image" else ""
    raise InvalidInput(
        f"baseline {value!r} is not one of {', '.join(BASELINES[kind])}{also}", field="baseline"
    )


def _int(given: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    found = _optional_int(given, name, low, high)
    return default if found is None else found


def _optional_int(given: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = given.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}", field=name)
    return value
