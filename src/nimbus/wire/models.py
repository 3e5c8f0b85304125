"""The model registry on the wire: model versions with their lineage, models, aliases and
their history, and the bodies that register a version or move an alias (docs/api.md,
"Models")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from nimbus.wire.base import Request, Response, Timestamp
from nimbus.wire.cards import CardText


class ModelFile(Response):
    """One file of a model version: its blob key (``sha256/…``) and size in bytes."""

    key: str
    size: int


class ModelDataset(Response):
    """The dataset version the job that trained a model version read, as resolved when the
    job was submitted (unknown parts null)."""

    name: str | None = None
    version: int | None = None
    content_hash: str | None = None


class ModelVersion(Response):
    """A registered, immutable model version: its files, its lineage (job, dataset, code,
    params, seed), the job's evaluation, and the aliases naming it now. A version imported
    from an ONNX file (``lineage`` "imported") has no job, dataset, code or evaluation."""

    # Always sent; defaulted only when read from a server older than the field.
    model_config = ConfigDict(
        extra="ignore", frozen=True, json_schema_serialization_defaults_required=True
    )

    model: str
    version: int
    job: str | None = Field(
        description="The job that trained it (the job itself may be gone); null when imported."
    )
    dataset: ModelDataset
    code_hash: str | None = Field(
        description="sha256 of the uploaded training code; null for built-in models."
    )
    params: dict[str, Any]
    seed: int | None
    metrics: dict[str, Any] | None = Field(description="The job's evaluation on its test split.")
    spec: dict[str, Any] = Field(description="The model's spec.json.")
    files: dict[str, ModelFile] = Field(
        description="spec.json, weights.safetensors and model.onnx."
    )
    aliases: list[str]
    created_at: Timestamp
    created_by: str | None = Field(description="The id of the token that registered it.")
    lineage: Literal["trained", "imported"] = Field(
        default="trained",
        description="trained: registered from a Nimbus job; imported: an ONNX file trained "
        "elsewhere (nimbus models import), with no job and no evaluation.",
    )


class ModelVersionList(Response):
    """``GET /models/{name}/versions``."""

    versions: list[ModelVersion]


class ModelSummary(Response):
    """A model as ``GET /models`` lists it."""

    name: str
    latest_version: int | None = Field(description="Null when no version is left.")
    versions: int = Field(description="How many versions it has.")
    aliases: dict[str, int] = Field(description="Alias to version number.")
    created_at: Timestamp
    updated_at: Timestamp | None = Field(
        description="When its latest version was registered; null when none is left."
    )


class ModelList(Response):
    """``GET /models``."""

    models: list[ModelSummary]


class AliasEvent(Response):
    """One move of an alias: set (``from_version`` null), moved, or removed (``version``
    null)."""

    alias: str
    version: int | None
    from_version: int | None
    at: Timestamp
    by: str | None = Field(description="The id of the token that moved it.")


class Model(Response):
    """A model with all its versions, its aliases and their history (oldest first)."""

    name: str
    created_at: Timestamp
    versions: list[ModelVersion]
    aliases: dict[str, int] = Field(description="Alias to version number.")
    alias_history: list[AliasEvent]


class AliasChange(Response):
    """What setting or removing an alias did: ``version`` is where it points now (null once
    removed), ``from_version`` where it pointed before (null if it was new)."""

    model: str
    alias: str
    version: int | None
    from_version: int | None


class RegisterVersion(Request):
    """The body of ``POST /models/{name}/versions``: the succeeded job whose model to
    register."""

    job: str = Field(min_length=1, max_length=64)
    card: CardText | None = Field(
        default=None, description="The model card's text the new version starts with."
    )


class SetAlias(Request):
    """The body of ``PUT /models/{name}/aliases/{alias}``."""

    version: int = Field(ge=1)
