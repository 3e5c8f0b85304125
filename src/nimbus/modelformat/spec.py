"""The serving view of a model directory's ``spec.json`` (see docs/model-format.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.modelformat.dtypes import DTYPES, TensorSpec
from nimbus.modelformat.files import SPEC_FILE

PROBABILITIES = "probabilities"
LABEL = "label"


@dataclass(frozen=True)
class ModelSpec:
    """Signature, classes and preprocessing of a trained model."""

    task: Task
    architecture: str
    classes: tuple[str, ...]
    input: TensorSpec
    onnx_input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    arch_params: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, model_dir: Path) -> ModelSpec:
        """Read and validate ``MODEL_DIR/spec.json``."""
        path = Path(model_dir) / SPEC_FILE
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise InvalidInput(f"{path} does not exist: not a model directory") from None
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """Validate a parsed spec; a broken one is an :class:`InvalidInput`."""
        if not isinstance(raw, dict):
            raise InvalidInput("spec.json must hold a JSON object")
        if raw.get("format_version") != 1:
            raise InvalidInput(f"unsupported spec format_version {raw.get('format_version')!r}")
        try:
            task = Task(raw["task"])
            classes = tuple(str(c) for c in raw["classes"])
            spec = cls(
                task=task,
                architecture=str(raw.get("architecture", "custom")),
                classes=classes,
                input=_tensor(raw["input"]),
                onnx_input=_tensor(raw.get("onnx_input") or raw["input"]),
                outputs=tuple(_tensor(o) for o in raw["outputs"]),
                preprocessing=dict(raw.get("preprocessing") or {}),
                arch_params=dict(raw.get("arch_params") or {}),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"invalid spec.json: {exc!r}") from None
        if not classes:
            raise InvalidInput("invalid spec.json: no classes")
        if spec.input.shape[:1] != (-1,) or spec.onnx_input.shape[:1] != (-1,):
            raise InvalidInput("invalid spec.json: the first input dimension must be -1 (batch)")
        if PROBABILITIES not in {o.name for o in spec.outputs}:
            raise InvalidInput(f"invalid spec.json: no '{PROBABILITIES}' output")
        return spec

    @property
    def image_transform(self) -> Any:
        """``preprocessing["transform"]``: how ingest fitted the training images, which
        ``/predict`` applies to uploaded photos (docs/datasets.md); None when not recorded."""
        return self.preprocessing.get("transform") if self.task is Task.IMAGE else None

    @property
    def imported(self) -> Mapping[str, Any] | None:
        """``imported``: how to serve a model trained elsewhere (docs/import.md): its scored
        output, whether that is a softmax, its fixed batch; None for models Nimbus trained."""
        record = self.raw.get("imported")
        return record if isinstance(record, Mapping) else None

    def output(self, name: str) -> TensorSpec:
        return next(o for o in self.outputs if o.name == name)


def _tensor(raw: Mapping[str, Any]) -> TensorSpec:
    datatype = str(raw["datatype"])
    if datatype not in DTYPES:
        raise ValueError(f"unknown datatype {datatype!r}")
    return TensorSpec(str(raw["name"]), datatype, tuple(int(d) for d in raw["shape"]))
