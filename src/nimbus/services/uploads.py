"""Direct uploads: the client PUTs a file's parts straight into the bucket with presigned
URLs; the control plane checks what arrived, then records a dataset version.

A session lives in the bucket, under ``uploads/<tenant id>/<session id>/``: its
``session.json`` (who, what, which multipart upload) and, once completed, the joined
``source``. Only the control plane writes there; a client holds presigned URLs for single
parts of its own upload and nothing else. Every route looks a session up under the
caller's own tenant, so another tenant's session answers 404 like one that never existed.

Completion trusts nothing the client says: the parts must be exactly the ones the declared
size needs, and the joined object is read back from the bucket (streamed to a staging file,
memory bounded) and hashed. Only when its SHA-256 and size match does the object get its
content-addressed key (a copy inside the bucket, create-only) and the version exist; on a
mismatch the staged bytes are deleted and nothing is recorded (400 ``upload_mismatch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nimbus.datasets.domain import IngestOptions
from nimbus.datasets.imagefit import parse_fit, parse_image_size
from nimbus.errors import (
    DirectTransfersUnavailable,
    InvalidInput,
    NimbusError,
    NotFound,
    PayloadTooLarge,
    UploadMismatch,
)
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import discard, pin
from nimbus.services.datasets import DatasetService, UploadResult, validate_filename
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore, digest_of, key_for
from nimbus.storage.direct import (
    UPLOADS_PREFIX,
    DirectTransfers,
    StoredPart,
    part_count,
    part_length,
    part_size_for,
)
from nimbus.wire import uploads as wire

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SessionRecord:
    """What ``session.json`` holds."""

    id: str
    tenant_id: int
    dataset: str
    upload_id: str
    size: int
    part_size: int
    created_at: float
    created_by: str
    request: dict[str, Any]  # the CreateUpload body: file name and ingest options

    @property
    def parts(self) -> int:
        return part_count(self.size, self.part_size)


def session_dir(tenant_id: int, session_id: str) -> str:
    return f"{UPLOADS_PREFIX}{tenant_id}/{session_id}/"


def options_of(request: wire.CreateUpload) -> IngestOptions:
    """The ingest options an upload asked for, checked as the streamed route checks them."""
    return IngestOptions(
        task=request.task,
        format=request.format,
        label=request.label,
        seed=request.seed,
        image_size=None if request.image_size is None else parse_image_size(request.image_size),
        image_fit=None if request.image_fit is None else parse_fit(request.image_fit),
    )


class UploadService:
    """Direct uploads and download links over a store's :class:`DirectTransfers`."""

    def __init__(
        self,
        blobs: BlobStore,
        datasets: DatasetService,
        direct: DirectTransfers | None,
        *,
        url_seconds: int = 300,
        max_bytes: int,
        quotas: QuotaService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blobs = blobs
        self.datasets = datasets
        self.direct = direct
        self.url_seconds = url_seconds
        self.max_bytes = max_bytes
        self.quotas = quotas
        self.clock = clock

    def _transfers(self) -> DirectTransfers:
        if self.direct is None:
            raise DirectTransfersUnavailable(
                "this server's blob store has no direct transfers (a local directory): "
                "upload through POST /api/v1/datasets/{name}/versions"
            )
        return self.direct

    # -- sessions -----------------------------------------------------------------------

    def create(
        self, principal: Principal, name: str, request: wire.CreateUpload
    ) -> wire.UploadSession:
        """Begin a direct upload of ``request.size`` bytes as a new version of ``name``."""
        require_role(principal, Role.MEMBER)
        validate_name(name, "dataset name")
        validate_filename(request.filename)
        options_of(request)  # refuse bad options now, not after the upload
        direct = self._transfers()
        if request.size > self.max_bytes:
            raise PayloadTooLarge(
                f"upload of {request.size} bytes is over the limit of {self.max_bytes} bytes",
                limit=self.max_bytes,
            )
        if self.quotas is not None:
            self.quotas.check_bytes_now(principal.tenant_id, request.size, f"dataset {name!r}")
        session_id = secrets.token_hex(16)
        source = session_dir(principal.tenant_id, session_id) + "source"
        record = SessionRecord(
            id=session_id,
            tenant_id=principal.tenant_id,
            dataset=name,
            upload_id=direct.start_upload(source),
            size=request.size,
            part_size=part_size_for(request.size),
            created_at=self.clock(),
            created_by=principal.token_id,
            request=request.model_dump(mode="json"),
        )
        self._write_record(record)
        return self._view(record, [])

    def show(self, principal: Principal, session_id: str) -> wire.UploadSession:
        """The session with the parts the bucket holds so far (for a client resuming)."""
        record = self._load(principal, session_id)
        return self._view(record, self._stored_parts(record))

    def part_urls(self, principal: Principal, session_id: str, numbers: list[int]) -> wire.PartUrls:
        """Presigned PUT URLs for parts ``numbers`` of the session's upload."""
        require_role(principal, Role.MEMBER)
        record = self._load(principal, session_id)
        bad = [n for n in numbers if not 1 <= n <= record.parts]
        if bad:
            raise InvalidInput(
                f"part numbers {bad[:5]} are out of range: this upload has parts 1-{record.parts}"
            )
        direct = self._transfers()
        source = session_dir(record.tenant_id, record.id) + "source"
        urls = {
            n: direct.part_url(
                source,
                record.upload_id,
                n,
                part_length(record.size, record.part_size, n),
                self.url_seconds,
            )
            for n in sorted(set(numbers))
        }
        return wire.PartUrls(urls=urls, expires_at=self._moment(self.clock() + self.url_seconds))

    def abort(self, principal: Principal, session_id: str) -> None:
        """Drop the upload: its parts, its staged object, its session."""
        require_role(principal, Role.MEMBER)
        record = self._load(principal, session_id)
        self._cleanup(record)

    def complete(self, principal: Principal, session_id: str, sha256: str) -> UploadResult:
        """Join the parts, check the result against ``sha256`` and the declared size by
        reading it back from the bucket, then ingest it as a new version (or find the
        identical one). On a mismatch nothing is recorded and the upload is dropped."""
        require_role(principal, Role.MEMBER)
        record = self._load(principal, session_id)
        direct = self._transfers()
        source = session_dir(record.tenant_id, record.id) + "source"
        started = time.perf_counter()
        if not self.blobs.objects.exists(source):
            parts = self._stored_parts(record)
            self._check_parts(record, parts)
            direct.complete_upload(source, record.upload_id, parts)
        joined = time.perf_counter()
        local = self._read_back(record, source, sha256)
        read = time.perf_counter()
        key = key_for(sha256)
        pin_id: int | None = None
        try:
            pin_id = pin(self.datasets.db, [key])
            self._place(direct, source, key, record.size)
            placed = time.perf_counter()
            log.info(
                "upload %s (%d bytes): joined in %.2f s, read back and hashed in %.2f s, "
                "stored under its hash in %.2f s",
                record.id,
                record.size,
                joined - started,
                read - joined,
                placed - read,
            )
            request = wire.CreateUpload.model_validate(record.request)
            try:
                result = self.datasets.upload(
                    principal,
                    record.dataset,
                    local,
                    sha256,
                    request.filename,
                    options_of(request),
                )
            except NimbusError as exc:
                if exc.status < 500:  # the data itself was refused: trying again cannot help
                    self._cleanup(record)
                raise
        finally:
            local.unlink(missing_ok=True)
            # The version holds its own reference now; without one the copy goes again.
            discard(self.datasets.db, self.blobs, [key] if pin_id is not None else [], pin_id)
        self._cleanup(record)
        return result

    # -- downloads ----------------------------------------------------------------------

    def link(self, key: str, size: int, name: str) -> wire.FileLink:
        """A presigned GET of blob ``key`` (None without direct transfers)."""
        sha256 = digest_of(key)
        if self.direct is None:
            return wire.FileLink(url=None, size=size, sha256=sha256, name=name)
        url = self.direct.get_url(key, self.url_seconds, name)
        expires = self._moment(self.clock() + self.url_seconds)
        return wire.FileLink(url=url, size=size, sha256=sha256, name=name, expires_at=expires)

    def direct_url(self, key: str) -> str | None:
        """A presigned GET of blob ``key`` for a node filling its cache (None: no direct
        transfers here)."""
        return None if self.direct is None else self.direct.get_url(key, self.url_seconds)

    # -- plumbing -----------------------------------------------------------------------

    def _check_parts(self, record: SessionRecord, parts: list[StoredPart]) -> None:
        have = {p.number: p for p in parts}
        missing = [n for n in range(1, record.parts + 1) if n not in have]
        if missing:
            shown = ", ".join(str(n) for n in missing[:10])
            raise InvalidInput(
                f"upload incomplete: {len(missing)} of {record.parts} parts missing ({shown}"
                f"{', …' if len(missing) > 10 else ''}); upload them, then complete again"
            )
        extra = [n for n in have if n > record.parts]
        if extra:
            raise UploadMismatch(f"parts {sorted(extra)[:5]} are beyond the declared size")
        for part in parts:
            expected = part_length(record.size, record.part_size, part.number)
            if part.size != expected:
                raise UploadMismatch(
                    f"part {part.number} holds {part.size} bytes, expected {expected}: "
                    "upload it again"
                )

    def _read_back(self, record: SessionRecord, source: str, sha256: str) -> Path:
        """Fetch the joined object to a staging file (ranged GETs in parallel), hash it
        there; refuse a mismatch."""
        self.datasets.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.datasets.tmp_dir, prefix="direct-")
        os.close(fd)
        path = Path(name)
        try:
            self._transfers().download(source, path)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
                size = os.fstat(f.fileno()).st_size
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size != record.size or digest.hexdigest() != sha256:
            path.unlink(missing_ok=True)
            self._cleanup(record)
            raise UploadMismatch(
                f"the uploaded bytes ({size} bytes, SHA-256 {digest.hexdigest()}) are not the "
                f"file declared ({record.size} bytes, SHA-256 {sha256}); the upload was "
                "dropped and nothing was recorded"
            )
        return path

    def _place(self, direct: DirectTransfers, source: str, key: str, size: int) -> None:
        """Give the verified object its content-addressed key, inside the bucket; an
        identical blob already stored is kept (create-only), a damaged one replaced."""
        objects = self.blobs.objects
        if objects.exists(key):
            if objects.size(key) == size:
                return
            objects.delete(key)
        direct.copy(source, key)

    def _stored_parts(self, record: SessionRecord) -> list[StoredPart]:
        source = session_dir(record.tenant_id, record.id) + "source"
        try:
            return self._transfers().parts(source, record.upload_id)
        except KeyError:
            raise NotFound(f"upload {record.id} is no longer in progress") from None

    def sweep_abandoned(self, before: float) -> int:
        """Abort the direct-upload sessions begun before ``before`` (epoch seconds): their
        unfinished multipart upload, joined source and record go; returns how many. Run by
        the garbage sweep with its grace period, so a resumable upload has that long."""
        if self.direct is None:
            return 0
        aborted = 0
        for key in list(self.blobs.objects.keys(UPLOADS_PREFIX)):
            if not key.endswith("/session.json"):
                continue
            try:
                with self.blobs.objects.open(key) as stream:
                    record = SessionRecord(**json.loads(stream.read()))
            except KeyError:
                continue  # completed or aborted meanwhile
            except (ValueError, TypeError):
                log.warning("upload record %s is unreadable; removing it", key)
                self.blobs.objects.delete(key)
                continue
            if key != session_dir(record.tenant_id, record.id) + "session.json":
                log.warning("upload record %s names another session; removing it", key)
                self.blobs.objects.delete(key)
                continue
            if record.created_at < before:
                self._cleanup(record)
                aborted += 1
        if aborted:
            log.info("aborted %d direct upload(s) idle past the grace period", aborted)
        return aborted

    def _cleanup(self, record: SessionRecord) -> None:
        directory = session_dir(record.tenant_id, record.id)
        self._transfers().abort_upload(directory + "source", record.upload_id)
        self.blobs.objects.delete(directory + "source")
        self.blobs.objects.delete(directory + "session.json")

    def _write_record(self, record: SessionRecord) -> None:
        staging = self.blobs.staging_dir
        fd, name = tempfile.mkstemp(dir=staging, prefix="session-")
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        try:
            self.blobs.objects.put_file(
                session_dir(record.tenant_id, record.id) + "session.json", Path(name)
            )
        finally:
            Path(name).unlink(missing_ok=True)

    def _load(self, principal: Principal, session_id: str) -> SessionRecord:
        """The caller's tenant's session ``session_id``; 404 for any other."""
        if not _SESSION_ID.match(session_id):
            raise NotFound(f"upload {session_id[:40]!r} not found")
        self._transfers()
        key = session_dir(principal.tenant_id, session_id) + "session.json"
        try:
            with self.blobs.objects.open(key) as stream:
                data = json.loads(stream.read())
        except KeyError:
            raise NotFound(f"upload {session_id!r} not found") from None
        record = SessionRecord(**data)
        if record.tenant_id != principal.tenant_id or record.id != session_id:
            raise NotFound(f"upload {session_id!r} not found")
        return record

    def _view(self, record: SessionRecord, parts: list[StoredPart]) -> wire.UploadSession:
        return wire.UploadSession(
            id=record.id,
            dataset=record.dataset,
            filename=str(record.request["filename"]),
            size=record.size,
            part_size=record.part_size,
            parts=record.parts,
            created_at=self._moment(record.created_at),
            uploaded=[wire.UploadedPart(number=p.number, size=p.size, etag=p.etag) for p in parts],
        )

    @staticmethod
    def _moment(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)
