"""Code artifacts: ``POST /code``."""

from __future__ import annotations

from enum import StrEnum

from nimbus.wire.base import Response, Timestamp


class CodeFormat(StrEnum):
    """How the code was uploaded: one script, a directory with ``main.py`` at its root, or a
    notebook (run with papermill)."""

    PY = "py"
    TAR = "tar"
    IPYNB = "ipynb"


class CodeArtifact(Response):
    """An uploaded training script or code directory; jobs name it by ``ref``
    (``code:sha256/…``) as their model. ``entry`` is ``main.py``, or ``main.ipynb`` for a
    notebook."""

    ref: str
    sha256: str
    size: int
    format: CodeFormat
    entry: str
    created_at: Timestamp
