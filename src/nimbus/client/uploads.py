"""The SDK's direct uploads and downloads (``/datasets/{name}/uploads``, ``/uploads/{id}``,
``…/files/{file}/link``): the bytes go between this machine and the bucket, the control
plane only signs and checks. See :mod:`nimbus.client.direct` for the pieces."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nimbus.client.base import API, BaseClient
from nimbus.client.direct import (
    PartUploader,
    ResumeBook,
    UrlSource,
    fetch_direct,
    file_identity,
    note,
    part_length,
    part_matches,
)
from nimbus.client.transfer import Progress
from nimbus.digests import FileDigest, file_sha256
from nimbus.errors import (
    DirectTransfersUnavailable,
    InvalidInput,
    NimbusError,
    NotFound,
    UploadRestarted,
)
from nimbus.ranged_get import Link
from nimbus.wire.datasets import DatasetVersion
from nimbus.wire.uploads import FileLink, PartUrls, UploadSession


class DirectTransfersMixin(BaseClient):
    """Direct transfers, used by the resource mixins when the server offers them."""

    def _resume_book(self) -> ResumeBook:
        return ResumeBook(self._settings.home / "uploads")

    def _upload_direct(
        self,
        name: str,
        file: Path,
        filename: str,
        options: Mapping[str, Any],
        progress: Progress | None,
        digest: FileDigest | None = None,
    ) -> DatasetVersion | None:
        """Upload ``file`` straight into the bucket and complete it as a version of
        ``name``; None when the server has no direct transfers (stream it instead).
        ``digest``: the file's hash begun earlier (used when it describes ``file``)."""
        size = file.stat().st_size
        if size < self._settings.direct_min_bytes:
            if digest is not None:
                digest.cancel()  # streamed: nothing declares a hash
            return None
        if digest is not None and not digest.describes(file):
            digest.cancel()
            digest = None
        book = self._resume_book()
        identity = file_identity(self.url, name, file, {"filename": filename, **options})
        remembered = book.find(identity)
        session = self._resumed(remembered.session if remembered is not None else None)
        # A resumed session goes on with the hash it was opened with: the same file (path,
        # size, modification time), and the hash its parts' key is (the server checks the
        # bytes against it at the end whatever the client says), so a large file is not
        # read through once more before the parts it still needs.
        sha256 = remembered.sha256 if session is not None and remembered is not None else None
        if sha256 is not None and digest is not None:
            digest.cancel()
        elif sha256 is None:
            # Hashed first: declared when the upload begins, the hash lets the parts go to
            # the content-addressed key itself (no copy in the bucket after the check).
            try:
                sha256 = digest.result() if digest is not None else file_sha256(file)
            except OSError as exc:
                raise InvalidInput(f"could not read {file} to hash it: {exc}") from None
        if session is None:
            body = {"filename": filename, "size": size, "sha256": sha256, **options}
            try:
                session = self._call(
                    UploadSession, "POST", f"{API}/datasets/{name}/uploads", json=body
                )
            except DirectTransfersUnavailable:
                return None
            book.remember(identity, session.id, sha256)
        for attempt in (1, 2):
            self._send_parts(file, session, progress)
            try:
                version = self._call(
                    DatasetVersion,
                    "POST",
                    f"{API}/uploads/{session.id}/complete",
                    json={"sha256": sha256},
                    timeout=self._no_read_deadline(),  # the server checks and prepares the data
                )
            except UploadRestarted:
                # Identical content was stored meanwhile: the session now has a staging
                # object, which needs the parts again (once; a second time is an error).
                restarted = self._resumed(session.id)
                if attempt == 2 or restarted is None:
                    raise
                note(f"upload {session.id}: sending the parts again (the server asked)")
                session = restarted
                continue
            except NimbusError as exc:
                if exc.status < 500 and self._resumed(session.id) is None:
                    book.forget(identity)  # the server dropped this upload: rerun starts afresh
                raise
            book.forget(identity)
            return version
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_parts(self, file: Path, session: UploadSession, progress: Progress | None) -> None:
        """PUT every part the bucket does not hold yet with this file's bytes."""
        todo = self._parts_to_send(file, session)
        uploader = PartUploader(
            file,
            session,
            UrlSource(lambda numbers: self._part_urls(session.id, numbers), todo),
            self._settings.upload_workers,
            progress,
            done=session.size - sum(_lengths(session, todo)),
        )
        if progress is not None:
            progress(uploader.done, session.size)
        uploader.run(todo)

    def _resumed(self, session_id: str | None) -> UploadSession | None:
        if session_id is None:
            return None
        try:
            return self._call(UploadSession, "GET", f"{API}/uploads/{quote(session_id)}")
        except NotFound:
            return None

    def _parts_to_send(self, file: Path, session: UploadSession) -> list[int]:
        """Every part but those the bucket already holds with this file's bytes."""
        kept: set[int] = set()
        if session.uploaded:
            with open(file, "rb") as f:
                kept = {
                    p.number
                    for p in session.uploaded
                    if p.number <= session.parts
                    and part_matches(f.fileno(), session, p.number, p.size, p.etag)
                }
            note(
                f"resuming upload {session.id}: {len(kept)} of {session.parts} parts already "
                "in the bucket (checked)"
            )
        return [n for n in range(1, session.parts + 1) if n not in kept]

    def _part_urls(self, session_id: str, numbers: list[int]) -> dict[int, str]:
        reply = self._call(
            PartUrls, "POST", f"{API}/uploads/{session_id}/parts", json={"numbers": numbers}
        )
        return dict(reply.urls)

    def _download_direct(
        self,
        files_path: str,
        name: str,
        out: Path,
        meta: Mapping[str, Any],
        done: int,
        total: int,
        progress: Progress | None,
    ) -> int | None:
        """Fetch one file through a presigned GET; None when the server offers no link (a
        local store, or a server from before direct transfers: 404)."""
        path = f"{files_path}/{quote(name, safe='')}/link"
        try:
            link = self._call(FileLink, "GET", path)
        except NotFound:
            return None
        if link.url is None:
            return None

        def renew() -> str:  # the URL expired mid-way (403): a fresh one
            url = self._call(FileLink, "GET", path).url
            if url is None:
                raise DirectTransfersUnavailable("the server stopped offering direct downloads")
            return url

        return fetch_direct(Link(link.url, renew), out, meta, done, total, progress)


def _lengths(session: UploadSession, numbers: list[int]) -> list[int]:
    return [part_length(session.size, session.part_size, n) for n in numbers]
