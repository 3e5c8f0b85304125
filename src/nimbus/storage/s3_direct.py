"""Direct transfers on S3 through boto3: multipart uploads by id, presigned URLs.

Why boto3 and not ``obstore.sign`` (the S3 backend reads and writes through obstore): an
upload part is ``PUT key?partNumber=N&uploadId=U``, and obstore signs only a bare path, so
it cannot presign a part; and obstore's multipart uploads are in-process handles, with no
upload id to resume from another process and no ListParts. boto3 exposes the whole
multipart API and presigns any operation, from the same AWS configuration chain.

Signing is done offline. The URLs carry the endpoint they were signed for (the signature
covers the Host header): when clients reach the bucket at another address than the control
plane does (a private endpoint inside, a public one outside), ``public_endpoint`` names the
address to sign for (``NIMBUS_STORAGE_PUBLIC_ENDPOINT``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nimbus.errors import StorageUnavailable
from nimbus.storage.direct import ObjectChanged, StoredPart
from nimbus.storage.ranged import LINK_SECONDS, read_back

COPY_OBJECT_MAX = 5 * 1000**3  # S3's limit on one CopyObject

# boto3's names for the obstore config keys the S3 backend accepts (tests pass these).
_CONFIG_TO_BOTO = {
    "access_key_id": "aws_access_key_id",
    "aws_access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "aws_secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "aws_session_token": "aws_session_token",
    "region": "region_name",
    "aws_region": "region_name",
    "endpoint": "endpoint_url",
    "aws_endpoint": "endpoint_url",
}


def boto_kwargs(config: Mapping[str, str]) -> dict[str, str]:
    """boto3 client arguments from the S3 backend's explicit config (empty: the AWS chain)."""
    return {_CONFIG_TO_BOTO[k]: v for k, v in config.items() if k in _CONFIG_TO_BOTO}


class S3Direct:
    """Multipart uploads and presigned URLs for keys under ``prefix`` in ``bucket``."""

    # A part URL is signed for one part number, upload id and length: parts may go to the
    # content-addressed key itself (services/uploads.py claims it meanwhile).
    writes_at_key = True

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        config: Mapping[str, str] | None = None,
        public_endpoint: str | None = None,
    ) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        kwargs = boto_kwargs(config or {})
        core = botocore.session.get_session()
        session = boto3.session.Session(botocore_session=core)
        # The certificates boto3 checks the service's against (AWS_CA_BUNDLE, or a
        # profile's ca_bundle): the read-back's own ranged GETs check against the same.
        self._ca_bundle: str | None = core.get_config_variable("ca_bundle")
        # SigV4 with path-style addressing: what every S3-compatible server accepts, and
        # what a presigned URL to a loopback or private endpoint needs.
        settings = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=120,
        )
        self._client: Any = session.client("s3", config=settings, **kwargs)
        if public_endpoint:
            signing = {**kwargs, "endpoint_url": public_endpoint}
            self._signer: Any = session.client("s3", config=settings, **signing)
        else:
            self._signer = self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, doing: str) -> StorageUnavailable:
        text = " ".join(str(exc).split())[:300]
        return StorageUnavailable(
            f"object storage s3://{self.bucket}/{self.prefix} unavailable while {doing}: {text}"
        )

    def _call(self, doing: str, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchUpload", "NoSuchKey", "404"):
                raise KeyError(kwargs.get("Key", "")) from None
            raise self._fail(exc, doing) from None
        except BotoCoreError as exc:
            raise self._fail(exc, doing) from None

    def start_upload(self, key: str) -> str:
        reply = self._call(
            f"starting an upload to {key}", "create_multipart_upload", Key=self._key(key)
        )
        return str(reply["UploadId"])

    def part_url(
        self, key: str, upload_id: str, number: int, length: int, expires_seconds: int
    ) -> str:
        return str(
            self._signer.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(key),
                    "UploadId": upload_id,
                    "PartNumber": number,
                    # Signed: a part of any other size is refused by the storage service,
                    # so a session stores no more than the size it declared (and was
                    # checked against the quota for).
                    "ContentLength": length,
                },
                ExpiresIn=expires_seconds,
            )
        )

    def parts(self, key: str, upload_id: str) -> list[StoredPart]:
        found: list[StoredPart] = []
        marker = 0
        while True:
            reply = self._call(
                f"listing the parts of an upload to {key}",
                "list_parts",
                Key=self._key(key),
                UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for part in reply.get("Parts", []):
                found.append(
                    StoredPart(int(part["PartNumber"]), int(part["Size"]), str(part["ETag"]))
                )
            if not reply.get("IsTruncated"):
                return sorted(found, key=lambda p: p.number)
            marker = int(reply["NextPartNumberMarker"])

    def complete_upload(
        self, key: str, upload_id: str, parts: list[StoredPart], *, create_only: bool = False
    ) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        # If-None-Match on CompleteMultipartUpload: AWS, SeaweedFS and moto refuse with 412
        # when the key exists and keep the upload (tests/storage/test_direct_contract.py).
        condition = {"IfNoneMatch": "*"} if create_only else {}
        try:
            reply = self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                },
                **condition,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            # 409 ConditionalRequestConflict: AWS's answer to a concurrent conditional write.
            if create_only and code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise FileExistsError(key) from None
            if code == "NoSuchUpload":
                raise KeyError(key) from None
            raise self._fail(exc, f"completing an upload to {key}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"completing an upload to {key}") from None
        return str(reply["ETag"])

    def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(KeyError):
            self._call(
                f"aborting an upload to {key}",
                "abort_multipart_upload",
                Key=self._key(key),
                UploadId=upload_id,
            )

    def get_url(self, key: str, expires_seconds: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
        return str(
            self._signer.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_seconds
            )
        )

    def download(self, key: str, target: Path, etag: str | None = None) -> str:
        """Ranged GETs of a URL presigned for the service's own endpoint, each ``If-Match``
        the object's entity tag, streamed into place and hashed as they land
        (:mod:`nimbus.ranged_get`, as the SDK's downloads): boto3's ``get_object`` reads
        each piece into a new bytes object and copies it again (urllib3, http.client)."""
        tag, size = self.stat(key)
        if etag is not None and tag != etag:
            raise ObjectChanged(key)
        return read_back(
            key, target, tag, size, lambda: self._read_url(key), cafile=self._ca_bundle
        )

    def _read_url(self, key: str) -> str:
        """A presigned GET of ``key`` on the endpoint the control plane reaches."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        return str(
            self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=LINK_SECONDS)
        )

    def stat(self, key: str) -> tuple[str, int]:
        head = self._call(f"looking up {key}", "head_object", Key=self._key(key))
        return str(head["ETag"]), int(head["ContentLength"])

    def copy(self, source: str, target: str, etag: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"CopySourceIfMatch": etag} if etag is not None else {}
        # One CopyObject up to its 5 GB ceiling (on SeaweedFS here ~40% faster than parts);
        # past it boto3's managed copy, UploadPartCopy parts. The bytes stay in the service.
        copy_source = {"Bucket": self.bucket, "Key": self._key(source)}
        try:
            size = int(self._client.head_object(**copy_source)["ContentLength"])
            if size <= COPY_OBJECT_MAX:
                self._client.copy_object(
                    Bucket=self.bucket, Key=self._key(target), CopySource=copy_source, **condition
                )
            else:
                self._client.copy(
                    copy_source, self.bucket, self._key(target), ExtraArgs=condition or None
                )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise ObjectChanged(source) from None
            if code in ("NoSuchKey", "404"):
                raise KeyError(source) from None
            raise self._fail(exc, f"copying {source}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"copying {source}") from None
