"""Datasets and their versions: ``/datasets`` and ``/datasets/{name}/versions``.

An upload's body is the raw file and its options are query parameters, so no request model
is declared here; the file routes answer bytes, not JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from nimbus.datasets.domain import Format, Task
from nimbus.wire.base import Request, Response, Timestamp


class StoredFile(Response):
    """A file of a version: its blob key and size; ``name`` (the uploaded file's name) only
    for the ``source``, and left out of the JSON for the others."""

    key: str
    size: int
    name: str | None = Field(default=None, exclude_if=lambda name: name is None)


class Split(Response):
    """One split (train, val or test): its size and its examples per class."""

    size: int
    per_class: dict[str, int]


class DatasetVersion(Response):
    """An immutable version of a dataset, identified by ``content_hash``. ``size_bytes`` is
    the uploaded source's size; ``files`` names what ``…/files/{file}`` serves."""

    # "schema" would shadow BaseModel.schema(): the attribute is ``data_schema``, the JSON
    # field (and the constructor's keyword) stays "schema".
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    dataset: str
    version: int
    content_hash: str
    source_hash: str
    task: Task
    format: Format
    size_bytes: int
    classes: list[str]
    num_classes: int
    splits: dict[str, Split]
    data_schema: dict[str, Any] = Field(alias="schema")
    stats: dict[str, Any]
    split_source: str | None
    files: dict[str, StoredFile]
    created_at: Timestamp
    created_by: str | None


class VersionList(Response):
    """``GET /datasets/{name}/versions``: oldest first."""

    versions: list[DatasetVersion]


class Dataset(Response):
    """``GET /datasets/{name}``: a dataset with all its versions."""

    name: str
    created_at: Timestamp
    versions: list[DatasetVersion]


class DatasetSummary(Response):
    """A dataset as listed: ``versions`` is how many it has, ``latest_version`` None when
    none is left."""

    name: str
    created_at: Timestamp
    latest_version: int | None
    versions: int


class DatasetList(Response):
    """``GET /datasets``: the datasets of the caller's tenant."""

    datasets: list[DatasetSummary]


class DatasetDeleted(Response):
    """``DELETE /datasets/{name}``: the dataset and the numbers of the versions it had."""

    name: str
    deleted_versions: list[int]


class Derived(Response):
    """``GET /datasets/{name}/versions/{v}/derived``: what purging the version deletes, and
    the fingerprint a purge must quote (it changes when the list does)."""

    dataset: str
    jobs: list[str]  # their artifacts, checkpoints and logs
    model_versions: list[str]  # NAME:V, registered from those jobs
    deployments: list[str]  # serving those versions: a purge is refused while any is
    fingerprint: str


class PurgeRequest(Request):
    confirm: str = Field(min_length=1, max_length=64)


class Purged(Derived):
    deleted_blobs: int
