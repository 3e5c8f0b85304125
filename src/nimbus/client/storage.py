"""The blob store's garbage: ``POST /storage/sweep`` (operators)."""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from nimbus.client.base import API, BaseClient
from nimbus.errors import InvalidInput
from nimbus.wire.storage import SweepReport, SweepRequest


class StorageMixin(BaseClient):
    """``/storage/sweep``."""

    def sweep_storage(self, grace_seconds: float | None = None) -> SweepReport:
        """Run a garbage sweep now (operators only): unreferenced blobs and upload pins older
        than ``grace_seconds`` (None: the server's setting) go, and stale staging files."""
        try:
            body = SweepRequest(grace_seconds=grace_seconds)
        except ValidationError as exc:
            raise InvalidInput(f"invalid grace period: {exc.errors()[0]['msg']}") from None
        # A sweep lists the whole store: give it longer than an ordinary call.
        timeout = httpx.Timeout(600.0, connect=10.0)
        return self._call(
            SweepReport, "POST", f"{API}/storage/sweep", json=body.model_dump(), timeout=timeout
        )
