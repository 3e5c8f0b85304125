"""Files of MLflow runs (``/api/2.0/mlflow-artifacts/artifacts/...``): stored in the blob
store under their content hash like every other Nimbus file, recorded by path under the
run, and listed one directory at a time as MLflow's artifact client expects.

An artifact path is ``EXPERIMENT_ID/RUN_ID/artifacts/FILE``: the run's ``artifact_uri``
(``mlflow-artifacts:/EXPERIMENT_ID/RUN_ID/artifacts``) plus the file's path under it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import blobrefs
from nimbus.db import tracking as repo
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.db.tracking import ACTIVE
from nimbus.db.tracking_tables import RunArtifactRow, RunRow
from nimbus.errors import InvalidInput, NotFound, PayloadTooLarge
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import (
    FileDownload,
    delete_quietly,
    discard,
    move_in,
    pin,
    verified_download,
)
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore

RUN_ARTIFACT = "tracking_artifact"  # owner kind of a run file's blob reference
MAX_PATH = 1024


@dataclass(frozen=True)
class ArtifactPath:
    experiment_id: int
    run_id: str
    file: str  # under the run's artifact root; "" for the root itself


def parse_artifact_path(text: str) -> ArtifactPath:
    """``EXPERIMENT_ID/RUN_ID/artifacts[/FILE]`` with a safe relative FILE; 400 otherwise
    (absolute paths, ``..``, empty or backslashed segments)."""
    text = text.strip("/")
    if "\x00" in text:
        raise InvalidInput("an artifact path may not contain NUL characters")
    parts = text.split("/")
    if len(parts) < 3 or not parts[0].isdigit() or parts[2] != "artifacts" or not parts[1]:
        raise InvalidInput(
            f"invalid artifact path {text[:200]!r}: expected EXPERIMENT_ID/RUN_ID/artifacts/PATH "
            "(a run's artifact_uri and the file's path under it)"
        )
    rest = parts[3:]
    for segment in rest:
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise InvalidInput(f"invalid artifact path {text[:200]!r}: unsafe segment {segment!r}")
    file = "/".join(rest)
    if len(file) > MAX_PATH:
        raise InvalidInput(f"artifact path is over {MAX_PATH} characters")
    if len(parts[0]) > 10 or int(parts[0]) > 2**31 - 1:
        raise NotFound(f"no experiment with id {parts[0][:40]!r}")
    return ArtifactPath(int(parts[0]), parts[1], file)


def directory_listing(paths: dict[str, int], directory: str) -> list[dict[str, Any]]:
    """The entries right under ``directory`` ("" for the root) among files ``path -> size``:
    files with their size, and each subdirectory once. A ``directory`` that is a file lists
    nothing (as MLflow's own stores answer)."""
    if directory in paths:
        return []
    prefix = f"{directory}/" if directory else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, size in paths.items():
        if not path.startswith(prefix):
            continue
        head, slash, _ = path[len(prefix) :].partition("/")
        if slash:
            entries.setdefault(head, {"path": head, "is_dir": True})
        else:
            entries[head] = {"path": head, "is_dir": False, "file_size": size}
    return [entries[name] for name in sorted(entries)]


class TrackingFileService:
    """Upload, list and download the files of MLflow runs, in the caller's tenant."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        quotas: QuotaService | None = None,
        *,
        max_bytes: int = 2 * 1024**3,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.quotas = quotas
        self.max_bytes = max_bytes
        self.clock = clock

    def _run(self, session: Session, principal: Principal, where: ArtifactPath) -> RunRow:
        found = repo.run(session, principal.tenant_id, where.run_id)
        if found is None or found.experiment_id != where.experiment_id:
            raise NotFound(f"no run {where.run_id[:64]!r} in experiment {where.experiment_id}")
        return found

    def check_upload(self, principal: Principal, where: ArtifactPath, size: int | None) -> None:
        """Refuse early, before the body: 403, 404, 413, or 507 past the storage quota."""
        require_role(principal, Role.MEMBER)
        if not where.file:
            raise InvalidInput("an artifact upload needs a file path under the run's artifacts")
        if size is not None and size > self.max_bytes:
            raise PayloadTooLarge(
                f"an artifact of {size} bytes is over the limit of {self.max_bytes} bytes",
                limit=self.max_bytes,
            )
        with self.db.session() as session:
            run = self._run(session, principal, where)
            if run.lifecycle_stage != ACTIVE:
                raise InvalidInput(f"run {run.id} is deleted: restore it before logging to it")
            if size is not None and self.quotas is not None:
                self.quotas.check_bytes(
                    session, principal.tenant_id, size, f"artifact {where.file!r}"
                )

    def put(
        self, principal: Principal, where: ArtifactPath, path: Path, sha256: str, size: int
    ) -> None:
        """Store a staged file (``path`` consumed) at ``where``, replacing a file there:
        pinned, stored under its hash, then recorded with its blob reference in one
        transaction; nothing is kept on failure."""
        self.check_upload(principal, where, None)
        blobs = self.blobs.for_tenant(principal.tenant_id)
        key = blobs.key_for(sha256)
        try:
            pin_id = pin(self.db, [key])
            try:
                move_in(blobs, path, sha256, size)
                with self.db.session(write=True) as session:
                    blobrefs.lock(session)
                    self._run(session, principal, where)
                    old = repo.artifact(session, where.run_id, where.file)
                    if self.quotas is not None:
                        adding = size - (old.size if old is not None else 0)
                        self.quotas.check_bytes(
                            session, principal.tenant_id, adding, f"artifact {where.file!r}"
                        )
                    row_id, replaced = repo.put_artifact(
                        session, where.run_id, where.file, key, size, self.clock()
                    )
                    blobrefs.add(session, RUN_ARTIFACT, row_id, [key])
                    orphans = (
                        []
                        if replaced is None
                        else blobrefs.release(session, RUN_ARTIFACT, replaced)
                    )
                    blobrefs.unpin(session, pin_id, [key])
                    delete_quietly(self.blobs, blobrefs.unreferenced(session, orphans))
            except BaseException:
                discard(self.db, self.blobs, [key], pin_id)
                raise
        finally:
            path.unlink(missing_ok=True)

    def list(self, principal: Principal, where: ArtifactPath) -> list[dict[str, Any]]:
        with self.db.session() as session:
            self._run(session, principal, where)
            files = {a.path: a.size for a in repo.artifacts(session, where.run_id)}
        return directory_listing(files, where.file)

    def download(self, principal: Principal, where: ArtifactPath) -> FileDownload:
        with self.db.session() as session:
            self._run(session, principal, where)
            found: RunArtifactRow | None = repo.artifact(session, where.run_id, where.file)
            if found is None:
                raise NotFound(f"run {where.run_id} has no artifact {where.file[:200]!r}")
            key, size = found.blob_key, found.size
        name = where.file.rsplit("/", 1)[-1]
        return verified_download(self.blobs.for_tenant(principal.tenant_id), key, size, name)
