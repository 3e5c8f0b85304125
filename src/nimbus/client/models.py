"""The model registry: register a job's model or import an ONNX file, list, show, alias,
download, delete."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from nimbus.client.base import API
from nimbus.client.transfer import Progress, chunks
from nimbus.client.uploads import DirectTransfersMixin
from nimbus.errors import InvalidInput
from nimbus.names import parse_reference, validate_alias, validate_name, version_number
from nimbus.wire.base import dump
from nimbus.wire.cards import ModelCard
from nimbus.wire.models import AliasChange, Model, ModelList, ModelSummary, ModelVersion


@dataclass(frozen=True)
class ModelRef:
    """``NAME`` / ``NAME:latest`` (the latest version), ``NAME:VERSION`` or ``NAME@ALIAS``."""

    name: str
    version: int | Literal["latest"] | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        found = parse_reference(ref, "model", aliases=True)
        return cls(found.name, found.version, found.alias)

    @property
    def segment(self) -> str:
        """The version as it appears in a URL path: ``3``, ``latest`` or ``@alias``."""
        if self.alias is not None:
            return f"@{self.alias}"
        return "latest" if self.version is None else str(self.version)

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}:{self.version}"


def as_model_ref(ref: str | ModelRef) -> ModelRef:
    return ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)


def _version_number(version: int | str) -> int:
    number = version_number(str(version))
    if number is None:
        raise InvalidInput(f"invalid model version {version!r}: a positive integer")
    return number


class ModelsMixin(DirectTransfersMixin):
    """``/models``, ``/models/{name}/versions`` and ``/models/{name}/aliases``."""

    def register_model(
        self,
        name: str,
        job: str,
        *,
        description: str | None = None,
        intended_use: str | None = None,
        limitations: str | None = None,
        ethical_considerations: str | None = None,
    ) -> ModelVersion:
        """Register a succeeded job's model as a new version of ``name`` (created on its first
        version), its model card starting with the text given; registering the same job
        again returns the existing version (its card unchanged: see :meth:`edit_model_card`)."""
        validate_name(name, "model name")
        if not isinstance(job, str) or not job.strip():
            raise InvalidInput("a job id is required (--from-job)")
        body: dict[str, Any] = {"job": job.strip()}
        text = _card_text(
            description=description,
            intended_use=intended_use,
            limitations=limitations,
            ethical_considerations=ethical_considerations,
        )
        if text:
            body["card"] = text
        return self._call(ModelVersion, "POST", f"{API}/models/{name}/versions", json=body)

    def import_model(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        task: str,
        classes: Sequence[str],
        input_layout: str | None = None,
        scale: str | float | None = None,
        mean: Sequence[float] | str | None = None,
        std: Sequence[float] | str | None = None,
        size: tuple[int, int] | str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Import an ONNX model trained elsewhere as a new version of ``name`` (lineage
        "imported"): ``task`` is ``image-classification``, ``text-classification`` or
        ``tabular`` (``tabular-classification``); ``classes`` name its scores in order. For
        images, how ``/predict`` makes a photo its input: ``size`` (``(H, W)`` or ``"HxW"``),
        ``input_layout`` (``NCHW`` or ``NHWC``; guessed from the shape when clear), then
        ``pixel * scale`` (e.g. ``"1/255"``), minus ``mean``, over ``std`` per channel. The
        server checks it (docs/import.md) and answers 400 naming what it refuses; importing
        the same file with the same options again returns the version made the first time."""
        validate_name(name, "model name")
        source = Path(path)
        if not source.is_file():
            raise InvalidInput(f"no such file: {source}")
        if isinstance(classes, str) or not classes:
            raise InvalidInput("classes must be a non-empty list of class names")
        params: dict[str, Any] = {
            "task": task,
            "classes": list(classes),
            "filename": source.name,
        }
        if input_layout is not None:
            params["input_layout"] = input_layout
        if scale is not None:
            params["scale"] = str(scale)
        for key, values in (("mean", mean), ("std", std)):
            if values is not None:
                params[key] = values if isinstance(values, str) else ",".join(map(str, values))
        if size is not None:
            params["size"] = size if isinstance(size, str) else f"{size[0]}x{size[1]}"
        total = source.stat().st_size
        return self._call(
            ModelVersion,
            "POST",
            f"{API}/models/{name}/imports",
            params=params,
            content=chunks(source, total, progress),
            headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
            # The server checks the model before it answers, within its own time limit.
            timeout=self._no_read_deadline(),
        )

    def model_card(self, ref: str | ModelRef) -> ModelCard:
        """A version's model card (docs/model-format.md, "Model cards"), generated now."""
        return self._call(ModelCard, "GET", _version_path(as_model_ref(ref)) + "/card")

    def model_card_text(self, ref: str | ModelRef, format: Literal["md", "html"] = "md") -> str:
        """A version's model card as Markdown (Hugging Face layout) or as an HTML page."""
        if format not in ("md", "html"):
            raise InvalidInput(f"invalid card format {format!r}: md or html (or model_card())")
        path = _version_path(as_model_ref(ref)) + "/card"
        return self._request("GET", path, params={"format": format}).text

    def edit_model_card(
        self,
        ref: str | ModelRef,
        *,
        description: str | None = None,
        intended_use: str | None = None,
        limitations: str | None = None,
        ethical_considerations: str | None = None,
    ) -> ModelCard:
        """Set the card's text fields that are given ("" clears one; None leaves it)."""
        text = _card_text(
            description=description,
            intended_use=intended_use,
            limitations=limitations,
            ethical_considerations=ethical_considerations,
        )
        if not text:
            raise InvalidInput(
                "nothing to change: give --description, --intended-use, --limitations or "
                "--ethical-considerations"
            )
        path = _version_path(as_model_ref(ref)) + "/card"
        return self._call(ModelCard, "PATCH", path, json=text)

    def list_models(self) -> list[ModelSummary]:
        """Every model of the caller's tenant: latest version, version count, aliases."""
        return self._call(ModelList, "GET", f"{API}/models").models

    def get_model(self, name: str) -> Model:
        """A model with all its versions, its aliases and their history."""
        return self._call(Model, "GET", f"{API}/models/{validate_name(name, 'model name')}")

    def get_model_version(self, ref: str | ModelRef) -> ModelVersion:
        """One version: ``NAME`` (latest), ``NAME:V`` or ``NAME@ALIAS``."""
        return self._call(ModelVersion, "GET", _version_path(as_model_ref(ref)))

    def set_alias(self, name: str, alias: str, version: int | str) -> AliasChange:
        """Point ``alias`` at ``version``; says where it pointed before."""
        validate_name(name, "model name")
        path = f"{API}/models/{name}/aliases/{validate_alias(alias)}"
        return self._call(AliasChange, "PUT", path, json={"version": _version_number(version)})

    def delete_alias(self, name: str, alias: str) -> AliasChange:
        """Remove ``alias`` from model ``name``."""
        validate_name(name, "model name")
        path = f"{API}/models/{name}/aliases/{validate_alias(alias)}"
        return self._call(AliasChange, "DELETE", path)

    def download_model(
        self,
        ref: str | ModelRef,
        dir: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Write a version's files (spec.json, weights, ONNX; each hash-checked) into ``dir``,
        plus its metadata as ``version.json``. The directory can be served by
        ``nimbus serve``."""
        version = self.get_model_version(ref)
        base = f"{API}/models/{version.model}/versions/{version.version}/files"
        return self._download_version(
            dump(version), base, dir, progress, _model_file_name, direct=True
        )

    def delete_model_version(self, ref: str | ModelRef) -> ModelVersion:
        """Delete one version (``NAME:V`` or ``NAME@ALIAS``; a bare name is refused).
        Fails with :class:`~nimbus.errors.Conflict` while a deployment serves it."""
        ref = as_model_ref(ref)
        if ref.version is None and ref.alias is None:
            raise InvalidInput(f"name the version to delete: {ref.name}:VERSION")
        return self._call(ModelVersion, "DELETE", _version_path(ref))


def _card_text(**fields: str | None) -> dict[str, str]:
    return {name: value for name, value in fields.items() if value is not None}


def _model_file_name(name: str, meta: dict[str, Any]) -> str:
    """A model file keeps its name, which must be a plain file name."""
    if Path(name).name != name or name in ("", ".", "..", "version.json"):
        raise InvalidInput(f"the server named a model file {name!r}: refusing it")
    return name


def _version_path(ref: ModelRef) -> str:
    return f"{API}/models/{ref.name}/versions/{quote(ref.segment, safe='@')}"
