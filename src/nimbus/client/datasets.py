"""Datasets: upload (streamed), list, show, download (verified), delete."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from nimbus.client.base import API
from nimbus.client.transfer import Progress, chunks, local_name, packed
from nimbus.client.uploads import DirectTransfersMixin
from nimbus.datasets.domain import Format, Task
from nimbus.digests import FileDigest
from nimbus.errors import InvalidInput
from nimbus.names import parse_reference, validate_name
from nimbus.wire.base import dump
from nimbus.wire.cards import Datasheet, DatasheetText
from nimbus.wire.datasets import (
    Dataset,
    DatasetDeleted,
    DatasetList,
    DatasetSummary,
    DatasetVersion,
    Derived,
    Purged,
    PurgeRequest,
)


@dataclass(frozen=True)
class DatasetRef:
    """``NAME`` (the latest version), ``NAME:VERSION`` or ``NAME:latest``."""

    name: str
    version: int | Literal["latest"] | None = None

    @classmethod
    def parse(cls, ref: str) -> DatasetRef:
        found = parse_reference(ref, "dataset")
        return cls(found.name, found.version)

    @property
    def segment(self) -> str:
        """The version as it appears in a URL path."""
        return "latest" if self.version is None else str(self.version)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def as_ref(ref: str | DatasetRef) -> DatasetRef:
    """``ref`` parsed (and so validated) unless it already is a :class:`DatasetRef`."""
    return ref if isinstance(ref, DatasetRef) else DatasetRef.parse(ref)


class DatasetsMixin(DirectTransfersMixin):
    """``/datasets`` and ``/datasets/{name}/versions``."""

    def upload_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        task: Task | str | None = None,
        format: Format | str | None = None,
        label: str | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
        image_size: str | tuple[int, int] | None = None,
        image_fit: str | None = None,
        group_column: str | None = None,
        motivation: str | None = None,
        composition: str | None = None,
        collection_process: str | None = None,
        uses: str | None = None,
        license: str | None = None,
        digest: FileDigest | None = None,
    ) -> DatasetVersion:
        """Upload a file (or a directory, sent as a .tar) as a new version of dataset ``name``.

        ``motivation``, ``composition``, ``collection_process``, ``uses`` and ``license`` are
        the datasheet's text (what only a person knows; :meth:`edit_datasheet` changes it
        later): checked before any byte is sent, set once the version exists.

        Images of an image-folder upload are brought to ``image_size`` (``"HxW"`` or
        ``(height, width)``; default: chosen from the data) by ``image_fit`` (``"crop"``,
        the default, or ``"pad"``); see docs/datasets.md. ``group_column`` names a
        sensitive attribute's column (tables and text), kept out of the features: the jobs
        on this version report their test metrics per group (fairness).

        A file of ``direct_min_bytes`` or more goes straight into the bucket when the server's
        blob store offers direct transfers (presigned part URLs, resumable: running the same
        upload again after an interruption continues it); otherwise it is streamed through
        the server in :data:`CHUNK_SIZE` chunks. ``progress(sent, total)`` is called as
        bytes go. Returns the version object (the existing one when identical
        content with the same options was uploaded before).

        ``digest``: the file's SHA-256 begun in the background before this call
        (:class:`nimbus.digests.FileDigest`, as the CLI does), so a direct upload does not
        wait for the whole hash after its setup; ignored unless it is of the file at
        ``path`` as it is now.
        """
        try:
            validate_name(name, "dataset name")
            text = _sheet_text(
                motivation=motivation,
                composition=composition,
                collection_process=collection_process,
                uses=uses,
                license=license,
            )
            params = {
                "task": _choice(Task, task, "task"),
                "format": _choice(Format, format, "format"),
                "label": label,
                "seed": seed,
                "image_size": f"{image_size[0]}x{image_size[1]}"
                if isinstance(image_size, tuple)
                else image_size,
                "image_fit": image_fit,
                "group_column": group_column,
            }
            source = Path(path)
            if not source.exists():
                raise InvalidInput(f"no such file or directory: {source}")
            with packed(source) as (file, filename):
                options = {k: v for k, v in params.items() if v is not None}
                version = self._upload_direct(name, file, filename, options, progress, digest)
                if version is None:
                    version = self._upload_streamed(name, file, filename, params, progress)
        finally:
            if digest is not None:
                digest.cancel()  # not needed after all (done already: nothing happens)
        if text:
            self.edit_datasheet(f"{version.dataset}:{version.version}", **text)
        return version

    def _upload_streamed(
        self,
        name: str,
        file: Path,
        filename: str,
        params: dict[str, Any],
        progress: Progress | None,
    ) -> DatasetVersion:
        size = file.stat().st_size
        return self._call(
            DatasetVersion,
            "POST",
            f"{API}/datasets/{name}/versions",
            params={"filename": filename, **params},
            content=chunks(file, size, progress),
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            },
            # The server prepares the data before it answers: no read deadline.
            timeout=self._no_read_deadline(),
        )

    def list_datasets(self) -> list[DatasetSummary]:
        """Every dataset of the caller's tenant with its latest version number."""
        return self._call(DatasetList, "GET", f"{API}/datasets").datasets

    def get_dataset(self, name: str) -> Dataset:
        """A dataset with all its versions."""
        return self._call(Dataset, "GET", f"{API}/datasets/{validate_name(name, 'dataset name')}")

    def get_version(self, ref: str | DatasetRef) -> DatasetVersion:
        """One version: ``ref`` is ``NAME`` (latest) or ``NAME:VERSION``."""
        ref = as_ref(ref)
        return self._call(
            DatasetVersion, "GET", f"{API}/datasets/{ref.name}/versions/{ref.segment}"
        )

    def datasheet(self, ref: str | DatasetRef) -> Datasheet:
        """A version's datasheet (``ref``: ``NAME`` for the latest, or ``NAME:VERSION``)."""
        path = _datasheet_path(ref)
        return self._call(Datasheet, "GET", path)

    def datasheet_markdown(self, ref: str | DatasetRef, format: str = "md") -> str:
        """A version's datasheet as Markdown (a Hugging Face style dataset card), or with
        ``format="html"`` as a page for people."""
        if format not in ("md", "html"):
            raise InvalidInput(f"invalid datasheet format {format!r}: md or html (or datasheet())")
        path = _datasheet_path(ref)
        return self._request("GET", path, params={"format": format}).text

    def edit_datasheet(
        self,
        ref: str | DatasetRef,
        *,
        motivation: str | None = None,
        composition: str | None = None,
        collection_process: str | None = None,
        uses: str | None = None,
        license: str | None = None,
    ) -> Datasheet:
        """Set the datasheet's text fields that are given ("" clears one; None leaves it)."""
        text = _sheet_text(
            motivation=motivation,
            composition=composition,
            collection_process=collection_process,
            uses=uses,
            license=license,
        )
        if not text:
            raise InvalidInput(
                "nothing to change: give --motivation, --composition, --collection-process, "
                "--uses or --license"
            )
        path = _datasheet_path(ref)
        return self._call(Datasheet, "PATCH", path, json=text)

    def download_dataset(
        self,
        ref: str | DatasetRef,
        dir: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Write every file of a version into ``dir`` plus its metadata as ``version.json``.

        Each file is streamed to disk, checked against its content hash and size, and only
        then renamed into place. The source keeps its uploaded name where that is safe.
        """
        version = self.get_version(ref)
        base = f"{API}/datasets/{version.dataset}/versions/{version.version}/files"
        return self._download_version(
            dump(version),
            base,
            dir,
            progress,
            lambda key, meta: local_name(key, meta, version.files),
            direct=True,
        )

    def delete_dataset(self, ref: str | DatasetRef) -> DatasetVersion | DatasetDeleted:
        """``NAME:VERSION`` deletes one version (returned); a bare ``NAME`` deletes the whole
        dataset (returned with the numbers of the versions it had)."""
        ref = as_ref(ref)
        if ref.version is None:
            return self._call(DatasetDeleted, "DELETE", f"{API}/datasets/{ref.name}")
        return self._call(
            DatasetVersion, "DELETE", f"{API}/datasets/{ref.name}/versions/{ref.segment}"
        )

    def derived_from(self, ref: str | DatasetRef) -> Derived:
        """What purging version ``NAME:V`` would delete, with the fingerprint to confirm."""
        ref = _numbered(ref)
        return self._call(
            Derived, "GET", f"{API}/datasets/{ref.name}/versions/{ref.segment}/derived"
        )

    def purge_dataset_version(self, ref: str | DatasetRef, confirm: str) -> Purged:
        """Erase version ``NAME:V`` and everything made from it, as :meth:`derived_from`
        listed it (its ``fingerprint`` as ``confirm``)."""
        ref = _numbered(ref)
        body = PurgeRequest(confirm=confirm).model_dump(mode="json")
        url = f"{API}/datasets/{ref.name}/versions/{ref.segment}/purge"
        return self._call(Purged, "POST", url, json=body)


def _sheet_text(**fields: str | None) -> dict[str, str]:
    """The datasheet fields given, checked as the server checks them (lengths)."""
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        DatasheetText.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"datasheet {field}: {first['msg']}", field=field) from None
    return given


def _numbered(ref: str | DatasetRef) -> DatasetRef:
    found = as_ref(ref)
    if found.version is None or found.version == "latest":
        raise InvalidInput(f"name the version to purge: NAME:V, not {str(ref)!r}")
    return found


def _choice(enum: type[StrEnum], value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return str(enum(value))
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidInput(f"invalid {what} {value!r}: use one of {allowed}") from None


def _datasheet_path(ref: str | DatasetRef) -> str:
    """The REST path of a version's datasheet (``ref``: ``NAME`` or ``NAME:VERSION``)."""
    ref = as_ref(ref)
    return f"{API}/datasets/{ref.name}/versions/{ref.segment}/datasheet"
