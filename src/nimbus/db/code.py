"""Code artifacts repository: uploaded training code, one row per tenant and content."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from nimbus.db import blobrefs
from nimbus.db.tables import CodeArtifactRow

CODE_ARTIFACT = "code_artifact"  # blob reference owner kind: a code artifact row


def get(session: Session, tenant_id: int, blob_key: str) -> CodeArtifactRow | None:
    """The tenant's code artifact stored under ``blob_key``, or None."""
    query = select(CodeArtifactRow).where(
        CodeArtifactRow.tenant_id == tenant_id, CodeArtifactRow.blob_key == blob_key
    )
    return session.scalars(query).first()


def create(
    session: Session,
    *,
    tenant_id: int,
    blob_key: str,
    size: int,
    format: str,
    entry: str,
    created_by: str | None,
    now: datetime,
) -> CodeArtifactRow:
    """Record a code artifact and the blob reference that keeps its bytes (call under
    :func:`nimbus.db.blobrefs.lock`)."""
    row = CodeArtifactRow(
        tenant_id=tenant_id,
        blob_key=blob_key,
        size=size,
        format=format,
        entry=entry,
        created_by=created_by,
        created_at=now,
    )
    session.add(row)
    session.flush()
    blobrefs.add(session, CODE_ARTIFACT, row.id, [blob_key])
    return row
