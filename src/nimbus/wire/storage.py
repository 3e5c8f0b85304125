"""The blob store's garbage: ``POST /storage/sweep`` (operators)."""

from __future__ import annotations

from pydantic import Field

from nimbus.wire.base import Request, Response


class SweepRequest(Request):
    """``POST /storage/sweep``: the grace period for this sweep (null: the server's
    NIMBUS_BLOB_GRACE_SECONDS). Zero collects every unreferenced blob and every pin at once,
    failing uploads in flight (they retry), so it is for a quiet server."""

    grace_seconds: float | None = Field(default=None, ge=0, le=10 * 365 * 86_400)


class SweepReport(Response):
    """What one sweep did."""

    grace_seconds: float
    pins_dropped: int  # upload pins older than the grace period (crashed uploads)
    blobs_listed: int  # blobs in the object store
    blobs_deleted: int  # unreferenced for longer than the grace period
    blobs_waiting: int  # unreferenced, deleted by a later sweep unless referenced again
    blobs_failed: int  # could not be deleted (the store refused); a later sweep retries
    staging_removed: int  # staging files and work directories left by crashes
    uploads_aborted: int = 0  # direct-upload sessions idle past the grace period
