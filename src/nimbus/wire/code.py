"""Code artifacts: ``POST /code``."""

from __future__ import annotations

from enum import StrEnum

from nimbus.wire.base import Response, Timestamp


class CodeFormat(StrEnum):
    """How the code was uploaded: one script, or a directory with ``main.py`` at its root."""

    PY = "py"
    TAR = "tar"


class CodeArtifact(Response):
    """An uploaded training script or code directory; jobs name it by ``ref``
    (``code:sha256/…``) as their model. ``entry`` is always ``main.py``."""

    ref: str
    sha256: str
    size: int
    format: CodeFormat
    entry: str
    created_at: Timestamp
