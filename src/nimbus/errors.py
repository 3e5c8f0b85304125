"""One exception hierarchy. Each error knows its HTTP status, code and CLI exit code."""

from __future__ import annotations

from typing import Any, ClassVar


class NimbusError(Exception):
    """Base of every error Nimbus raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class InvalidInput(NimbusError):
    """The request or its data is malformed or breaks a rule."""

    status = 400
    code = "invalid_input"
    exit_code = 2


class InvalidDataset(InvalidInput):
    """An uploaded dataset cannot be read or validated."""

    code = "invalid_dataset"


class UploadMismatch(InvalidInput):
    """The bytes that arrived are not the bytes the client said it sent (hash or size)."""

    code = "upload_mismatch"


class Unauthorized(NimbusError):
    status = 401
    code = "unauthorized"
    exit_code = 3


class Forbidden(NimbusError):
    status = 403
    code = "forbidden"
    exit_code = 3


class NotFound(NimbusError):
    status = 404
    code = "not_found"
    exit_code = 4


class Conflict(NimbusError):
    status = 409
    code = "conflict"
    exit_code = 5


class DirectTransfersUnavailable(Conflict):
    """The blob store has no direct transfers (a local directory): stream through the API."""

    code = "direct_transfers_unavailable"


class UploadRestarted(Conflict):
    """A direct upload's content-addressed key was taken meanwhile (identical content being
    stored or checked by another upload): the session now goes through a staging key, and
    its parts must be uploaded again before it completes."""

    code = "upload_restarted"


class PayloadTooLarge(NimbusError):
    status = 413
    code = "payload_too_large"
    exit_code = 2


class TooManyRequests(NimbusError):
    """The caller holds as many of something (log streams) as a limit allows."""

    status = 429
    code = "too_many_requests"
    exit_code = 6


class QuotaExceeded(NimbusError):
    """The tenant's quota (concurrent jobs, deployments, replicas) is used up."""

    status = 429
    code = "quota_exceeded"
    exit_code = 2


class StorageQuotaExceeded(QuotaExceeded):
    """Storing this would take the tenant past its quota of stored bytes."""

    status = 507
    code = "storage_quota_exceeded"


class Unavailable(NimbusError):
    status = 503
    code = "unavailable"
    exit_code = 6


class StorageUnavailable(Unavailable):
    """The object storage (an S3 bucket, ...) cannot be reached or refused the request."""

    code = "storage_unavailable"


class MissingExtra(Unavailable):
    """What the settings ask for needs an optional dependency group (a pyproject extra)
    that is not installed: the message names the extra and how to install it."""

    code = "missing_extra"

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        super().__init__(
            f"{feature} needs the optional '{extra}' dependencies ({missing} is not "
            f"installed): pip install 'nimbus[{extra}]' (or 'nimbus[all]')"
        )
        self.extra = extra


class EncryptionKeyMismatch(Unavailable):
    """Encrypted blobs cannot be opened with this server's master key (another key, or
    a data key the keyring does not hold): nothing is served until the key is fixed."""

    code = "encryption_key_mismatch"


class CorruptBlob(NimbusError):
    """Stored bytes no longer match their content hash: never served."""

    status = 500
    code = "corrupt_blob"
    exit_code = 7


class ExportError(NimbusError):
    """An exported model does not behave like the trained one (a bug, never the user's)."""

    status = 500
    code = "export_failed"
    exit_code = 1


class ServerError(NimbusError):
    """An unexpected failure reported by the server (a bug)."""

    status = 500
    code = "internal"
    exit_code = 1


_BY_CODE: dict[str, type[NimbusError]] = {}


def _register(cls: type[NimbusError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(NimbusError)


def error_from_response(status: int, body: Any) -> NimbusError:
    """Rebuild the error a server reported, for the SDK and CLI."""
    code, message = "internal", f"server answered HTTP {status}"
    details: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
        details = body["error"].get("details") or {}
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = next((c for c in _BY_CODE.values() if c.status == status), ServerError)
    return cls(message, **details)
