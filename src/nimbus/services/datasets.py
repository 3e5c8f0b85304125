"""Datasets: upload (ingest once, store blobs, record an immutable version), read, delete."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from nimbus.datasets.domain import (
    Format,
    IngestLimits,
    IngestOptions,
    PreparedDataset,
    Task,
)
from nimbus.datasets.ingest import ingest as default_ingest
from nimbus.db import blobrefs
from nimbus.db import datasets as repo
from nimbus.db.engine import Database
from nimbus.db.tables import Dataset, DatasetVersion
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.names import validate_name, version_number
from nimbus.security import Principal, Role, as_utc, require_role
from nimbus.services import dataset_samples
from nimbus.services.blobs import (
    Claims,
    FileDownload,
    PinnedBatch,
    delete_quietly,
    verified_download,
)
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore
from nimbus.wire import datasets as wire

log = logging.getLogger(__name__)

IngestFn = Callable[[Path, str, IngestOptions, IngestLimits, Path], PreparedDataset]
SOURCE = "source"
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BAD_FILENAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except OSError:  # pragma: no cover - no C library to load
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Hand the memory allocator's free pages back to the OS (glibc; elsewhere a no-op).

    An ingest allocates tens of MB of temporaries on a worker thread (labels, split
    indices, windows: for millions of examples). glibc keeps freed blocks that size in the
    thread's arena, so without this the server's resident memory steps up with each big
    upload and stays there.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def content_hash(source_sha256: str, options: IngestOptions) -> str:
    """A version's identity: the source bytes plus every option that changes the result."""
    canonical = json.dumps(options.canonical(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((source_sha256 + canonical).encode("utf-8")).hexdigest()


def validate_filename(filename: str) -> str:
    """The uploaded file's base name (no directories, no control characters)."""
    if (
        not filename
        or len(filename) > 255
        or filename in (".", "..")
        or _BAD_FILENAME_CHARS.search(filename)
    ):
        raise InvalidInput("invalid filename: give the file's base name (no '/', 1-255 characters)")
    return filename


def version_view(row: DatasetVersion, dataset: str) -> wire.DatasetVersion:
    """A stored version as the API shows it: the row's columns plus what ingest found."""
    info = row.info or {}
    classes = info.get("classes", [])
    return wire.DatasetVersion(
        dataset=dataset,
        version=row.version,
        content_hash=row.content_hash,
        source_hash=row.source_hash,
        task=Task(row.task),
        format=Format(row.format),
        size_bytes=row.size_bytes,
        classes=classes,
        num_classes=info.get("num_classes", len(classes)),
        splits={name: wire.Split(**split) for name, split in info.get("splits", {}).items()},
        schema=info.get("schema", {}),
        stats=info.get("stats", {}),
        split_source=info.get("split_source"),
        files={name: wire.StoredFile(**entry) for name, entry in row.files.items()},
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
    )


def summary_view(summary: repo.DatasetSummary) -> wire.DatasetSummary:
    """A dataset as listed: how many versions it has and the latest one's number."""
    return wire.DatasetSummary(
        name=summary.name,
        created_at=as_utc(summary.created_at),
        latest_version=summary.latest_version,
        versions=summary.versions,
    )


def parse_version(text: str) -> int | None:
    """``latest`` -> None, a positive integer -> itself; anything else is a 400."""
    if text == "latest":
        return None
    if (number := version_number(text)) is not None:
        return number
    raise InvalidInput(f"invalid version {text[:40]!r}: use a positive integer or 'latest'")


class _Duplicate(Exception):
    """Aborts the version transaction: identical content was committed meanwhile."""

    def __init__(self, view: wire.DatasetVersion) -> None:
        super().__init__("duplicate version")
        self.view = view


@dataclass(frozen=True)
class UploadResult:
    version: wire.DatasetVersion
    created: bool


class DatasetService:
    """Datasets of every tenant; each method acts for one principal, within its tenant."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        tmp_dir: Path,
        limits: IngestLimits | None = None,
        ingest_fn: IngestFn | None = None,
        max_attempts: int = 5,
        quotas: QuotaService | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.claims = claims  # drops a dead control plane's claim on a key an upload needs
        self.tmp_dir = Path(tmp_dir)
        self.limits = limits or IngestLimits()
        self.ingest_fn: IngestFn = ingest_fn or default_ingest
        self.max_attempts = max_attempts
        self.quotas = quotas
        self.samples_seen = dataset_samples.SampleCache()

    # -- upload -------------------------------------------------------------------------

    def upload(
        self,
        principal: Principal,
        name: str,
        source_path: Path,
        source_sha256: str,
        filename: str,
        options: IngestOptions,
    ) -> UploadResult:
        """Ingest ``source_path`` (consumed: moved into the store or deleted) as a new
        version, or return the identical version already uploaded to this dataset.

        On any failure nothing remains: no version row, no unreferenced blob, no temp file.
        """
        workdir: Path | None = None
        batch = PinnedBatch(self.db, self.blobs.for_tenant(principal.tenant_id), claims=self.claims)
        try:
            require_role(principal, Role.MEMBER)
            validate_name(name, "dataset name")
            validate_filename(filename)
            digest = content_hash(source_sha256, options)
            existing = self._find_existing(principal, name, digest)
            if existing is not None:
                return UploadResult(existing, created=False)
            size = source_path.stat().st_size
            if self.quotas is not None:  # early: the source alone is already too much
                self.quotas.check_bytes_now(principal.tenant_id, size, f"dataset {name!r}")
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=self.tmp_dir))
            release_free_memory()  # what receiving the upload left, before ingest adds its own
            prepared = self.ingest_fn(source_path, filename, options, self.limits, workdir)
            for file_name in prepared.files:
                if file_name == SOURCE or not _FILE_NAME_RE.match(file_name):
                    raise ValueError(f"ingest produced a file with a bad name: {file_name!r}")
            # Only now that the data proved valid: store the source (moved, not copied)
            # while the prepared files are hashed and stored.
            source_stored = batch.move_in_background(source_path, source_sha256, size)
            refs = batch.move_files(prepared.files, prepared.digests)
            source = source_stored.result()
            files: dict[str, Any] = {SOURCE: {"key": source.key, "size": size, "name": filename}}
            files.update({n: {"key": r.key, "size": r.size} for n, r in refs.items()})
            assert batch.pin_id is not None
            result = self._commit(
                principal, name, digest, source_sha256, size, prepared, files, batch.pin_id, options
            )
            if not result.created:
                batch.discard()  # identical content was committed meanwhile
            return result
        except BaseException:
            batch.discard()
            raise
        finally:
            batch.close()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            source_path.unlink(missing_ok=True)
            if workdir is not None:
                release_free_memory()

    def _find_existing(
        self, principal: Principal, name: str, digest: str
    ) -> wire.DatasetVersion | None:
        with self.db.session() as session:
            dataset = repo.get_dataset(session, principal.tenant_id, name)
            row = repo.find_by_content(session, dataset.id, digest) if dataset else None
            return version_view(row, name) if row is not None else None

    def _commit(
        self,
        principal: Principal,
        name: str,
        digest: str,
        source_sha256: str,
        size: int,
        prepared: PreparedDataset,
        files: dict[str, Any],
        pin_id: int,
        options: IngestOptions,
    ) -> UploadResult:
        """Record the version and its blob references in one transaction (releasing the
        upload's pin), retrying when a concurrent upload wins a race for a number or a name.
        When identical content was committed meanwhile, the pin is left to the caller."""
        info = {**prepared.info(), "options": options.canonical()}
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self.db.session(write=True) as session:
                    blobrefs.lock(session)
                    dataset = repo.get_or_create_dataset(session, principal.tenant_id, name)
                    number = repo.allocate_version_number(session, dataset)
                    same = repo.find_by_content(session, dataset.id, digest)
                    if same is not None:  # a concurrent identical upload won
                        raise _Duplicate(version_view(same, name))
                    if self.quotas is not None:  # the source and its prepared arrays
                        total = sum(int(entry["size"]) for entry in files.values())
                        self.quotas.check_bytes(
                            session, principal.tenant_id, total, f"dataset {name!r}"
                        )
                    row = repo.create_version(
                        session,
                        dataset_id=dataset.id,
                        version=number,
                        content_hash=digest,
                        source_hash=source_sha256,
                        task=str(prepared.task),
                        format=str(prepared.format),
                        size_bytes=size,
                        info=info,
                        files=files,
                        created_by=principal.token_id,
                    )
                    keys = [entry["key"] for entry in files.values()]
                    blobrefs.add(session, blobrefs.DATASET_VERSION, row.id, keys)
                    blobrefs.unpin(session, pin_id, keys)
                    return UploadResult(version_view(row, name), created=True)
            except _Duplicate as duplicate:
                return UploadResult(duplicate.view, created=False)
            except IntegrityError:
                if attempt == self.max_attempts:
                    raise Conflict(
                        f"dataset {name!r} is being changed concurrently; try again"
                    ) from None
                log.info("upload to %s lost a race (attempt %d); retrying", name, attempt)
        raise AssertionError("unreachable")

    # -- read ---------------------------------------------------------------------------

    def list_datasets(self, principal: Principal) -> list[wire.DatasetSummary]:
        """The datasets of the caller's tenant."""
        with self.db.session() as session:
            return [summary_view(s) for s in repo.list_datasets(session, principal.tenant_id)]

    def get_dataset(self, principal: Principal, name: str) -> wire.Dataset:
        """A dataset with all its versions, oldest first."""
        with self.db.session() as session:
            dataset = find_dataset(session, principal, name)
            return wire.Dataset(
                name=dataset.name,
                created_at=as_utc(dataset.created_at),
                versions=[version_view(r, name) for r in repo.list_versions(session, dataset.id)],
            )

    def list_versions(self, principal: Principal, name: str) -> list[wire.DatasetVersion]:
        """The versions of a dataset, oldest first."""
        return self.get_dataset(principal, name).versions

    def get_version(
        self, principal: Principal, name: str, version: int | None
    ) -> wire.DatasetVersion:
        """One version (``None``: the latest)."""
        with self.db.session() as session:
            row = find_dataset_version(session, principal, name, version)
            return version_view(row, name)

    def overview(self, principal: Principal) -> list[repo.DatasetOverview]:
        """The caller's datasets with their latest version's task, format and size."""
        with self.db.session() as session:
            return repo.list_overview(session, principal.tenant_id)

    def jobs_using(
        self, principal: Principal, name: str, version: int, limit: int = 50
    ) -> list[repo.JobUse]:
        """The caller's jobs that read ``name:version``, newest first (at most ``limit``)."""
        with self.db.session() as session:
            find_dataset(session, principal, name)
            return repo.jobs_using(session, principal.tenant_id, name, version, limit)

    def samples(
        self, principal: Principal, name: str, version: int | None
    ) -> dataset_samples.Samples:
        """A few examples of each class of a version's train split (or its first split),
        read from the head of its prepared files (dataset_samples)."""
        view = self.get_version(principal, name, version)
        split = "train" if "train" in view.splits else next(iter(view.splits), "train")
        x, y = view.files.get(f"{split}_x.npy"), view.files.get(f"{split}_y.npy")
        if x is None or y is None:
            raise NotFound(f"{name}:{view.version} has no prepared {split} split to show")
        cache_key = f"{x.key} {y.key}"
        if (found := self.samples_seen.get(cache_key)) is not None:
            return found
        labels = self._head(y.key, dataset_samples.SCAN_ROWS)
        inputs = self._head(x.key, len(labels))
        built = dataset_samples.build(
            split, view.task, view.classes, view.data_schema, labels, inputs
        )
        self.samples_seen.put(cache_key, built)
        return built

    def _head(self, key: str, rows: int) -> Any:
        chunks = self.blobs.iter_verified(key)
        try:
            return dataset_samples.read_head(chunks, rows, dataset_samples.SCAN_BYTES)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def download(
        self, principal: Principal, name: str, version: int | None, file: str
    ) -> FileDownload:
        """A file of a version, verified against its hash before the first byte is handed
        out (CorruptBlob otherwise); the chunks are verified again as they stream."""
        view = self.get_version(principal, name, version)
        entry = view.files.get(file)
        if entry is None:
            raise NotFound(f"{name}:{view.version} has no file {file[:80]!r}")
        download_name = (entry.name or file) if file == SOURCE else file
        return verified_download(self.blobs, entry.key, entry.size, download_name)

    # -- delete -------------------------------------------------------------------------

    def delete_version(
        self, principal: Principal, name: str, version: int | None
    ) -> wire.DatasetVersion:
        """Delete one version; blobs that nothing else refers to go with it."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            row = find_dataset_version(session, principal, name, version)
            view = version_view(row, name)
            orphans = blobrefs.release(session, blobrefs.DATASET_VERSION, row.id)
            repo.delete_version(session, row)
            delete_quietly(self.blobs, orphans)
        return view

    def delete_dataset(self, principal: Principal, name: str) -> wire.DatasetDeleted:
        """Delete a dataset and all its versions."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            dataset = find_dataset(session, principal, name)
            rows = repo.list_versions(session, dataset.id)
            orphans: set[str] = set()
            for row in rows:
                orphans.update(blobrefs.release(session, blobrefs.DATASET_VERSION, row.id))
            repo.delete_dataset(session, dataset)
            delete_quietly(self.blobs, blobrefs.unreferenced(session, orphans))
        return wire.DatasetDeleted(name=name, deleted_versions=[row.version for row in rows])


def find_dataset(session: Any, principal: Principal, name: str) -> Dataset:
    """The principal's tenant's dataset ``name`` (404 when it has none)."""
    validate_name(name, "dataset name")
    dataset = repo.get_dataset(session, principal.tenant_id, name)
    if dataset is None:
        raise NotFound(f"dataset {name!r} not found")
    return dataset


def find_dataset_version(
    session: Any, principal: Principal, name: str, version: int | None
) -> DatasetVersion:
    """Version ``version`` of the tenant's dataset ``name`` (None: the latest); 404 when
    either is missing."""
    row = repo.get_version(session, find_dataset(session, principal, name).id, version)
    if row is None:
        raise NotFound(f"dataset {name!r} has no version {_shown(version)}")
    return row


def _shown(version: int | None) -> str:
    return "(none yet)" if version is None else str(version)
