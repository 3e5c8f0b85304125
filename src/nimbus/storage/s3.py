"""Object store in an S3 bucket (AWS or any S3-compatible server), through obstore.

Credentials, region and endpoint come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``), never
from the storage URL. Writes are create-only: a conditional put (``If-None-Match: *``) for
small objects; large files go up as a multipart upload of ``part_size`` parts, at most
``concurrency`` in flight, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

from obstore.store import S3Store

from nimbus.storage.cloud import (
    CONCURRENCY,
    PART_SIZE,
    ObstoreObjectStore,
    client_options,
    retry_config,
)
from nimbus.storage.s3_direct import S3Direct


class S3ObjectStore(ObstoreObjectStore):
    """Objects under ``prefix`` in ``bucket``; keys are ``/``-separated paths below it."""

    scheme = "s3"
    credential_hint = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    missing_codes = ("NoSuchBucket",)
    credential_codes = (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403 Forbidden",
    )

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        config: Mapping[str, str] | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
        retry_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        settings = dict(config or {})
        self._config = settings
        self._direct: dict[str | None, S3Direct] = {}
        endpoint = settings.get("endpoint") or settings.get("aws_endpoint")
        store = S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            config=settings or None,  # type: ignore[arg-type]
            client_options=client_options(  # type: ignore[arg-type]
                allow_http=bool(endpoint and endpoint.startswith("http://"))
                or _env_endpoint_is_http()
            ),
            retry_config=retry_config(retry_timeout),  # type: ignore[arg-type]
        )
        super().__init__(store, bucket, prefix, part_size=part_size, concurrency=concurrency)

    @property
    def bucket(self) -> str:
        return self.container

    def direct_transfers(self, public_endpoint: str | None = None) -> S3Direct:
        """Presigned URLs and multipart uploads by id on this bucket (boto3: see
        :mod:`nimbus.storage.s3_direct`), signed for ``public_endpoint`` when given."""
        if public_endpoint not in self._direct:
            self._direct[public_endpoint] = S3Direct(
                self.bucket, self.prefix, config=self._config, public_endpoint=public_endpoint
            )
        return self._direct[public_endpoint]


def _env_endpoint_is_http() -> bool:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
    return endpoint.startswith("http://")
