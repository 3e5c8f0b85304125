"""Code artifacts: training scripts and code directories that jobs run."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Member
from nimbus.api.state import services_of
from nimbus.api.upload import check_storage_quota_first, store_upload
from nimbus.services.datasets import validate_filename
from nimbus.wire.code import CodeArtifact

router = APIRouter(tags=["code"])


@router.post("/code", status_code=201, response_model=CodeArtifact)
async def upload_code(
    principal: Member, request: Request, filename: str | None = None
) -> CodeArtifact:
    """The raw body: a ``.py`` file, or a ``.tar`` of a directory with ``main.py``."""
    services = services_of(request)
    if filename is not None:
        validate_filename(filename)
    await check_storage_quota_first(request, services.quotas, principal.tenant_id, "code")
    return await store_upload(
        request,
        services.blobs.staging_dir,
        services.settings.max_code_bytes,
        lambda staged: services.code.upload(principal, staged.path, staged.sha256, filename),
    )
