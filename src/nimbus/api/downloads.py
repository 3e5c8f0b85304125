"""File downloads as HTTP responses: one shape for every route that hands out a stored file."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from nimbus.services.blobs import FileDownload

OCTETS = "application/octet-stream"
FILE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes",
        "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""The OpenAPI description of a download route's answer (``responses=`` of the route)."""


def attachment(download: FileDownload) -> StreamingResponse:
    """Stream ``download`` as an attachment saved under its name (RFC 6266 ``filename*``)."""
    headers = {
        "Content-Length": str(download.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(download.name, safe='')}",
    }
    return StreamingResponse(download.chunks, media_type=OCTETS, headers=headers)
