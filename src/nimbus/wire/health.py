"""``GET /healthz``: the one body that needs no token."""

from __future__ import annotations

from nimbus.wire.base import Response


class Health(Response):
    """The control plane is up, and which Nimbus it runs."""

    status: str
    version: str
