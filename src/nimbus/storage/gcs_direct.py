"""Direct transfers on Google Cloud Storage: parts PUT through V4 signed URLs as objects of
their own, composed by the server.

A V4 signed URL signs one method on one object name (and the headers it lists), for a
limited time; a signed PUT lets its holder create or replace that object. So a client never
writes a content-addressed key (``writes_at_key`` is False): each part is an object
``<staging>.parts/<upload id>/<number>`` under the session's directory, with a signed PUT
that also signs the part's ``Content-Length`` (GCS refuses a body of another length). The
server lists the parts (size and MD5, which the client checks when resuming), composes them
into the staging object (32 sources per compose, in a tree), reads it back pinned to its
generation and hashes it, then copies it to the content-addressed key with
``ifSourceGenerationMatch`` (the version checked) and ``ifGenerationMatch=0`` (create-only).

Signing needs a private key: service-account credentials (``GOOGLE_APPLICATION_CREDENTIALS``
naming a key file). Other credentials (user, metadata server) sign nothing: no direct
transfers then, every byte streams through the control plane.

What the emulator checks: fake-gcs-server accepts signed PUTs and GETs but verifies neither
signature, expiry, object name nor signed headers, and ignores generation preconditions on
copies; reads of a given generation it does honour. Only real GCS enforces a URL's scope.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.api_core import exceptions as api_errors

from nimbus.errors import InvalidInput
from nimbus.storage.direct import UPLOADS_PREFIX, ObjectChanged, StoredPart
from nimbus.storage.gcs import ERRORS, TIMEOUT
from nimbus.storage.ranged import read_into

COMPOSE_MAX = 32  # GCS's limit on the sources of one compose
_PART = re.compile(r"^(\d{6})$")


def parts_dir(key: str, upload_id: str = "") -> str:
    """Where the parts of the upload to ``key`` live (all uploads' when no id)."""
    return f"{key}.parts/{upload_id}/" if upload_id else f"{key}.parts/"


class GCSDirect:
    """Signed part PUTs, compose, read-back and conditional copies in one bucket."""

    writes_at_key = False

    def __init__(
        self,
        bucket: Any,
        prefix: str,
        *,
        signer: Any,
        endpoint: str,
        retry: Any,
        fail: Any,
    ) -> None:
        self._bucket = bucket
        self.prefix = prefix.strip("/")
        self._signer = signer
        self.endpoint = endpoint.rstrip("/")
        self._retry = retry
        self._fail = fail

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _sign(self, key: str, method: str, expires_seconds: int, **extra: Any) -> str:
        return str(
            self._bucket.blob(self._name(key)).generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=expires_seconds),
                method=method,
                credentials=self._signer,
                api_access_endpoint=self.endpoint,
                **extra,
            )
        )

    def _call(self, doing: str, operation: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, retry=self._retry, timeout=TIMEOUT, **kwargs)
        except api_errors.NotFound:
            raise KeyError(doing) from None
        except ERRORS as exc:
            raise self._fail(exc, doing) from None

    def _list(self, prefix: str, doing: str) -> list[Any]:
        """The objects whose names start with ``prefix`` (the store's prefix included)."""
        client = self._bucket.client

        def listing(**options: Any) -> list[Any]:
            return list(client.list_blobs(self._bucket, **options))

        return list(self._call(doing, listing, prefix=prefix))

    # -- uploads ------------------------------------------------------------------------

    def start_upload(self, key: str) -> str:
        return secrets.token_hex(8)  # nothing to create: each part is an object

    def part_url(
        self, key: str, upload_id: str, number: int, length: int, expires_seconds: int
    ) -> str:
        part = f"{parts_dir(key, upload_id)}{number:06d}"
        return self._sign(part, "PUT", expires_seconds, headers={"Content-Length": str(length)})

    def _listed(self, key: str, upload_id: str) -> list[Any]:
        return self._list(self._name(parts_dir(key, upload_id)), f"listing the parts of {key}")

    def parts(self, key: str, upload_id: str) -> list[StoredPart]:
        root = self._name(parts_dir(key, upload_id))
        found: list[StoredPart] = []
        for blob in self._listed(key, upload_id):
            match = _PART.match(blob.name[len(root) :])
            if match:
                md5 = base64.b64decode(blob.md5_hash or "").hex()
                found.append(StoredPart(int(match.group(1)), int(blob.size), md5))
        return sorted(found, key=lambda p: p.number)

    def complete_upload(
        self, key: str, upload_id: str, parts: list[StoredPart], *, create_only: bool = False
    ) -> str:
        root = parts_dir(key, upload_id)
        listed = {blob.name: blob for blob in self._listed(key, upload_id)}
        names = [self._name(f"{root}{p.number:06d}") for p in parts]
        missing = [n for n in names if n not in listed]
        if missing:
            raise InvalidInput(f"parts of {key} went missing: upload them again")
        # Each source pinned to the generation listed (and checked for size by the caller).
        sources = [listed[n] for n in names]
        level = 0
        while len(sources) > COMPOSE_MAX:
            level += 1
            sources = [
                self._compose(
                    f"{root}c{level}-{i:06d}", sources[i : i + COMPOSE_MAX], create_only=False
                )
                for i in range(0, len(sources), COMPOSE_MAX)
            ]
        joined = self._compose(key, sources, create_only=create_only)
        self._delete_parts(key)
        return str(joined.generation)

    def _compose(self, key: str, sources: list[Any], *, create_only: bool) -> Any:
        target = self._bucket.blob(self._name(key))
        condition = {"if_generation_match": 0} if create_only else {}
        try:
            target.compose(
                sources,
                if_source_generation_match=[s.generation for s in sources],
                retry=self._retry,
                timeout=TIMEOUT,
                **condition,
            )
        except api_errors.PreconditionFailed:
            if create_only and self._bucket.get_blob(target.name) is not None:
                raise FileExistsError(key) from None
            raise InvalidInput(f"parts of {key} changed while they were joined") from None
        except api_errors.NotFound:
            raise InvalidInput(f"parts of {key} went missing: upload them again") from None
        except ERRORS as exc:
            raise self._fail(exc, f"joining the parts of {key}") from None
        return target

    def _delete_parts(self, key: str) -> None:
        for blob in self._list(self._name(parts_dir(key)), f"listing the parts of {key}"):
            with contextlib.suppress(KeyError):
                self._call(f"deleting a part of {key}", blob.delete)

    def abort_upload(self, key: str, upload_id: str) -> None:
        if not key.startswith(UPLOADS_PREFIX):  # never a blob's key: only staging objects
            raise ValueError(f"{key} is no staging object")
        self._delete_parts(key)  # every attempt's parts (a restarted upload's included)
        with contextlib.suppress(KeyError):
            self._call(f"deleting {key}", self._bucket.delete_blob, self._name(key))

    # -- reads and copies ---------------------------------------------------------------

    def get_url(self, key: str, expires_seconds: int, filename: str | None = None) -> str:
        from urllib.parse import quote

        extra = {}
        if filename:
            extra["response_disposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
        return self._sign(key, "GET", expires_seconds, **extra)

    def stat(self, key: str) -> tuple[str, int]:
        blob = self._call(f"looking up {key}", self._bucket.get_blob, self._name(key))
        if blob is None:
            raise KeyError(key)
        return str(blob.generation), int(blob.size)

    def download(self, key: str, target: Path, etag: str | None = None) -> str:
        generation, size = self.stat(key)
        if etag is not None and generation != etag:
            raise ObjectChanged(key)
        # Pinned to the generation looked up: a replaced object answers 404, not new bytes.
        blob = self._bucket.blob(self._name(key), generation=int(generation))

        def fetch(lo: int, hi: int) -> Iterator[bytes]:
            try:
                yield self._call(
                    f"reading {key}",
                    blob.download_as_bytes,
                    start=lo,
                    end=hi - 1,
                    checksum=None,
                    raw_download=True,
                )
            except KeyError:
                raise ObjectChanged(key) from None

        return read_into(fetch, size, target, what=key)

    def copy(self, source: str, target: str, etag: str | None = None) -> None:
        source_blob = self._bucket.blob(self._name(source))
        condition: dict[str, Any] = {}
        if etag is not None:
            condition = {"source_generation": int(etag), "if_source_generation_match": int(etag)}
        try:
            self._bucket.copy_blob(
                source_blob,
                self._bucket,
                self._name(target),
                if_generation_match=0,
                retry=self._retry,
                timeout=TIMEOUT,
                **condition,
            )
        except api_errors.PreconditionFailed:
            if self._bucket.get_blob(self._name(target)) is not None:
                raise FileExistsError(target) from None
            raise ObjectChanged(source) from None
        except api_errors.NotFound:
            raise ObjectChanged(source) from None
        except ERRORS as exc:
            raise self._fail(exc, f"copying {source}") from None
