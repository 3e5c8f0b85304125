"""Console session repository: sign-ins and one-time links by the hash of their secret."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from nimbus.db.tables import ConsoleSessionRow


def add(
    session: Session,
    *,
    secret_hash: str,
    token_id: str,
    kind: str,
    now: datetime,
    expires_at: datetime,
) -> ConsoleSessionRow:
    row = ConsoleSessionRow(
        secret_hash=secret_hash, token_id=token_id, kind=kind, created_at=now, expires_at=expires_at
    )
    session.add(row)
    session.flush()
    return row


def live(session: Session, secret_hash: str, kind: str, now: datetime) -> ConsoleSessionRow | None:
    """The row of this kind with this hash, unless it has ended or expired."""
    return session.scalars(
        select(ConsoleSessionRow).where(
            ConsoleSessionRow.secret_hash == secret_hash,
            ConsoleSessionRow.kind == kind,
            ConsoleSessionRow.ended_at.is_(None),
            ConsoleSessionRow.expires_at > now,
        )
    ).first()


def end(session: Session, secret_hash: str, kind: str, now: datetime) -> bool:
    """End a live row (sign out, a link used); False if there was none, so a link redeemed
    by two requests at once is redeemed by only one of them."""
    result = session.execute(
        update(ConsoleSessionRow)
        .where(
            ConsoleSessionRow.secret_hash == secret_hash,
            ConsoleSessionRow.kind == kind,
            ConsoleSessionRow.ended_at.is_(None),
            ConsoleSessionRow.expires_at > now,
        )
        .values(ended_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def purge(session: Session, before: datetime) -> int:
    """Forget rows that expired before ``before``."""
    result = session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
