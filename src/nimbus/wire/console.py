"""Console wire types."""

from __future__ import annotations

from pydantic import Field

from nimbus.wire.base import Response


class SignInLink(Response):
    """``POST /console/links``: where a browser signs in once, relative to the server."""

    path: str = Field(description="/login/link?code=...; valid once, for two minutes.")
