"""Direct uploads: the client PUTs a file's parts straight into the bucket with presigned
URLs; the control plane checks what arrived, then records a dataset version.

A session lives in the bucket, under ``uploads/<tenant id>/<session id>/``: its
``session.json`` (who, what, which multipart upload). Only the control plane writes there;
a client holds presigned URLs for single parts of its own upload and nothing else. Every
route looks a session up under the caller's own tenant, so another tenant's session answers
404 like one that never existed.

Where the parts go: a client that declares the file's SHA-256 up front uploads them to the
content-addressed key itself (``sha256/…``), so nothing is copied inside the bucket
afterwards; otherwise (or when that key is already stored or in use) to a staging object
``uploads/<tenant>/<session>/source``, copied to its key once checked.

Completion trusts nothing the client says: the parts must be exactly the ones the declared
size needs, and the joined object is read back from the bucket (streamed to a staging file,
memory bounded) and hashed. At the content-addressed key the join is create-only
(``If-None-Match: *``) and done under a *claim* on the key (:func:`nimbus.services.blobs.claim`):
granted only while nothing refers to the key, it keeps every other upload from pinning,
keeping or recording the object until it is checked. Only when its SHA-256 and size match
does the version exist; on a mismatch the object is deleted (it was nobody else's) and
nothing is recorded (400 ``upload_mismatch``). A key taken meanwhile by another upload turns
the session into a staged one (409 ``upload_restarted``: the client sends the parts again).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from nimbus.datasets.domain import IngestOptions
from nimbus.datasets.imagefit import parse_fit, parse_image_size
from nimbus.errors import (
    DirectTransfersUnavailable,
    InvalidInput,
    NimbusError,
    NotFound,
    PayloadTooLarge,
    UploadMismatch,
    UploadRestarted,
)
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import (
    Claims,
    claim,
    confirm_claim,
    discard,
    drop_claim,
    is_referenced,
    pin,
)
from nimbus.services.datasets import DatasetService, UploadResult, validate_filename
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore, digest_of, key_for
from nimbus.storage.direct import (
    UPLOADS_PREFIX,
    DirectTransfers,
    ObjectChanged,
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
    request: dict[str, Any]  # the CreateUpload body: file name, ingest options, SHA-256
    # Where the parts go: the content-addressed key (the client declared the SHA-256 and
    # the key was free), or None: the session's staging object.
    target: str | None = None

    @property
    def parts(self) -> int:
        return part_count(self.size, self.part_size)

    @property
    def source(self) -> str:
        """The key the multipart upload writes."""
        return self.target or session_dir(self.tenant_id, self.id) + "source"


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
        group_column=request.group_column,
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
        claims: Claims | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blobs = blobs
        self.claims = claims
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
        record = SessionRecord(
            id=secrets.token_hex(16),
            tenant_id=principal.tenant_id,
            dataset=name,
            upload_id="",
            size=request.size,
            part_size=part_size_for(request.size),
            created_at=self.clock(),
            created_by=principal.token_id,
            request=request.model_dump(mode="json"),
            target=self._free_key(request.sha256),
        )
        record = replace(record, upload_id=direct.start_upload(record.source))
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
        urls = {
            n: direct.part_url(
                record.source,
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
        declared = record.request.get("sha256")
        if declared is not None and declared != sha256:
            raise UploadMismatch(
                f"SHA-256 {sha256} is not the one this upload declared when it began "
                f"({declared}); complete it with that one, or begin another upload"
            )
        started = time.perf_counter()
        pin_id: int | None
        if record.target is not None:
            local, pin_id = self._complete_at_key(record, direct, sha256)
        else:
            local, pin_id = self._complete_staged(record, direct, sha256)
        checked = time.perf_counter()
        log.info(
            "upload %s (%d bytes): joined, read back and hashed, stored under its hash in "
            "%.2f s (%s)",
            record.id,
            record.size,
            checked - started,
            "parts at the key" if record.target is not None else "staged, then copied",
        )
        key = key_for(sha256)
        try:
            request = wire.CreateUpload.model_validate(record.request)
            try:
                result = self.datasets.upload(
                    principal, record.dataset, local, sha256, request.filename, options_of(request)
                )
            except NimbusError as exc:
                # Refused data: trying again cannot help. At the key the upload is over.
                if exc.status < 500 or record.target is not None:
                    self._cleanup(record)
                raise
        finally:
            local.unlink(missing_ok=True)
            # The version holds its own reference now; without one the blob goes again.
            discard(self.datasets.db, self.blobs, [key], pin_id)
        self._cleanup(record)
        return result

    def _complete_at_key(
        self, record: SessionRecord, direct: DirectTransfers, sha256: str
    ) -> tuple[Path, int]:
        """Join the parts at the content-addressed key under a claim and check the object;
        returns the checked local copy and the pin that now holds the key."""
        key = record.source
        if key != key_for(sha256):  # the declared hash was checked against this one
            raise UploadMismatch(f"upload {record.id} was begun for another file")
        parts = self._stored_parts(record)
        self._check_parts(record, parts)
        db = self.datasets.db
        claim_id = self.claims.take(key) if self.claims is not None else claim(db, key)
        if claim_id is None:  # stored, pinned or checked by another upload meanwhile
            self._restart(record, direct)
        try:
            try:
                etag = direct.complete_upload(key, record.upload_id, parts, create_only=True)
            except FileExistsError:
                # An object nothing refers to (a crashed upload's, awaiting the sweep): the
                # claim is ours, so it goes, and the upload (kept by the refusal) completes.
                self.blobs.objects.delete(key)
                etag = direct.complete_upload(key, record.upload_id, parts, create_only=True)
            local = self._read_back(record, key, sha256, etag)
            return local, confirm_claim(db, claim_id)
        except BaseException:
            drop_claim(db, self.blobs, claim_id)  # the unchecked object goes with the claim
            raise

    def _complete_staged(
        self, record: SessionRecord, direct: DirectTransfers, sha256: str
    ) -> tuple[Path, int | None]:
        """Join the parts at the staging key, check them, and copy them to their key
        (unless it is stored already); returns the local copy and the pin on the key.
        Where a client's URL can write the staging object itself (Azure, GCS), everything
        after the join names the version joined: the committed size is checked before a
        byte is read, the read-back and the copy are conditional on that version."""
        source = record.source
        if not self.blobs.objects.exists(source):
            parts = self._stored_parts(record)
            self._check_parts(record, parts)
            direct.complete_upload(source, record.upload_id, parts)
        try:
            etag, size = direct.stat(source)
        except KeyError:
            raise NotFound(f"upload {record.id} is no longer in progress") from None
        if size != record.size:
            self._cleanup(record)
            raise UploadMismatch(
                f"the uploaded object holds {size} bytes, not the {record.size} declared; "
                "the upload was dropped and nothing was recorded"
            )
        local = self._read_back(record, source, sha256, etag)
        key = key_for(sha256)
        pin_id: int | None = None
        try:
            pin_id = pin(self.datasets.db, [key], claims=self.claims)
            self._place(record, direct, key, etag)
        except BaseException:
            local.unlink(missing_ok=True)
            discard(self.datasets.db, self.blobs, [key] if pin_id is not None else [], pin_id)
            raise
        return local, pin_id

    def _restart(self, record: SessionRecord, direct: DirectTransfers) -> NoReturn:
        """Point the session at a fresh staging upload instead of its key, and say so."""
        direct.abort_upload(record.source, record.upload_id)
        staged = replace(record, target=None, upload_id="")
        staged = replace(staged, upload_id=direct.start_upload(staged.source))
        self._write_record(staged, replacing=True)
        raise UploadRestarted(
            f"identical content is being stored by another upload, so upload {record.id} "
            "now goes through a staging object: upload all its parts again, then complete it"
        )

    def _free_key(self, sha256: str | None) -> str | None:
        """The content-addressed key for a direct upload declaring ``sha256``, when nothing
        is stored there and nothing refers to it; None otherwise (stage the upload)."""
        if sha256 is None or not self._transfers().writes_at_key:
            return None
        key = key_for(sha256)
        if is_referenced(self.datasets.db, key):
            # A claim left by a dead control plane holds the key no longer.
            if self.claims is None or not self.claims.drop_dead([key]):
                return None
            if is_referenced(self.datasets.db, key):
                return None
        if self.blobs.objects.exists(key):
            return None
        return key

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

    def _read_back(
        self, record: SessionRecord, source: str, sha256: str, etag: str | None = None
    ) -> Path:
        """Fetch the joined object (the version ``etag`` when given) to a staging file
        (ranged GETs in parallel), hash it there; refuse a mismatch."""
        self.datasets.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.datasets.tmp_dir, prefix="direct-")
        os.close(fd)
        path = Path(name)
        found = ""
        began = time.perf_counter()
        try:
            found = self._transfers().download(source, path, etag)  # hashed as it lands
            size = path.stat().st_size
            log.info(
                "upload %s: read back and hashed %d bytes in %.2f s",
                record.id,
                size,
                time.perf_counter() - began,
            )
        except ObjectChanged:
            size = -1  # replaced after the join: whatever it holds now is not what was sent
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size != record.size or found != sha256:
            path.unlink(missing_ok=True)
            self._cleanup(record)
            raise UploadMismatch(
                f"the uploaded bytes ({size} bytes, SHA-256 {found or '?'}) are not the "
                f"file declared ({record.size} bytes, SHA-256 {sha256}); the upload was "
                "dropped and nothing was recorded"
            )
        return path

    def _place(self, record: SessionRecord, direct: DirectTransfers, key: str, etag: str) -> None:
        """Give the verified object (version ``etag`` of the staging object) its
        content-addressed key, inside the bucket. An object already there is kept when
        whole: the caller holds a pin on the key, granted only while no unchecked direct
        upload claims it, so it is one the control plane wrote or checked
        (services/blobs.py); one of another size is damaged and replaced."""
        objects = self.blobs.objects
        if objects.exists(key):
            if objects.size(key) == record.size:
                return
            objects.delete(key)
        try:
            direct.copy(record.source, key, etag)
        except FileExistsError:
            return  # written meanwhile by another upload under its pin: the same bytes
        except ObjectChanged:
            # Replaced after the check by whoever held a write URL: not what was checked.
            self._cleanup(record)
            raise UploadMismatch(
                f"the staged object of upload {record.id} changed after it was checked; "
                "the upload was dropped and nothing was recorded"
            ) from None

    def _stored_parts(self, record: SessionRecord) -> list[StoredPart]:
        try:
            return self._transfers().parts(record.source, record.upload_id)
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
        self._transfers().abort_upload(record.source, record.upload_id)
        self.blobs.objects.delete(directory + "source")  # never the content-addressed key
        self.blobs.objects.delete(directory + "session.json")

    def _write_record(self, record: SessionRecord, *, replacing: bool = False) -> None:
        """Store the session's record (``replacing``: the one there; writes are
        create-only, so it is deleted first)."""
        key = session_dir(record.tenant_id, record.id) + "session.json"
        if replacing:
            self.blobs.objects.delete(key)
        staging = self.blobs.staging_dir
        fd, name = tempfile.mkstemp(dir=staging, prefix="session-")
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out)
        try:
            self.blobs.objects.put_file(key, Path(name))
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
