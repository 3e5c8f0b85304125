"""JSON views of stored records: the shapes docs/api.md promises, built in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nimbus.db.datasets import DatasetSummary
from nimbus.db.tables import AuditEvent, DatasetVersion, Token
from nimbus.security import as_utc


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC, or None."""
    return None if moment is None else as_utc(moment).isoformat().replace("+00:00", "Z")


def token_view(token: Token, tenant: str) -> dict[str, Any]:
    """A token without its secret or hash."""
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "tenant": tenant,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


def version_view(row: DatasetVersion, dataset: str) -> dict[str, Any]:
    info = row.info or {}
    return {
        "dataset": dataset,
        "version": row.version,
        "content_hash": row.content_hash,
        "source_hash": row.source_hash,
        "task": row.task,
        "format": row.format,
        "size_bytes": row.size_bytes,
        "classes": info.get("classes", []),
        "num_classes": info.get("num_classes", len(info.get("classes", []))),
        "splits": info.get("splits", {}),
        "schema": info.get("schema", {}),
        "stats": info.get("stats", {}),
        "split_source": info.get("split_source"),
        "files": row.files,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
    }


def dataset_summary_view(summary: DatasetSummary) -> dict[str, Any]:
    return {
        "name": summary.name,
        "created_at": iso(summary.created_at),
        "latest_version": summary.latest_version,
        "versions": summary.versions,
    }


def audit_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.created_at),
        "actor": event.actor,
        "token_id": event.token_id,
        "action": event.action,
        "resource": event.resource,
        "status": event.status,
        "detail": event.detail,
    }
