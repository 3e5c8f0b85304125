"""Console sign-ins: a browser trades an API token for a session cookie, and ``nimbus ui``
trades its token for a one-time link that signs a browser in.

A session stands for the token it was made from, and nothing more: every request checks the
token again (its role, tenant, revocation, expiry), so revoking a token signs out every
browser that used it. Sessions live in the metadata store, so any control plane over the
same database serves any browser. The secrets (cookie, link) exist only in return values;
the store keeps their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from nimbus.db import console_sessions as repo
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.errors import Unauthorized
from nimbus.security import Principal
from nimbus.services.tokens import TokenService

SESSION_PREFIX = "ncs_"
LINK_PREFIX = "ncl_"
SESSION_TTL = timedelta(hours=12)
LINK_TTL = timedelta(minutes=2)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a session: derived from its secret (which only the HttpOnly cookie
    and the server know), so a page of another origin can neither read nor forge it."""
    return hmac.new(session_secret.encode("utf-8"), b"nimbus-console-csrf", "sha256").hexdigest()


def csrf_matches(session_secret: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(session_secret), str(sent))


@dataclass(frozen=True)
class SignedIn:
    """A signed-in browser: who it acts as, and its session's secret (the cookie)."""

    principal: Principal
    secret: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)


class ConsoleSessionService:
    def __init__(
        self, db: Database, tokens: TokenService, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.clock = clock

    def sign_in(self, token_secret: str | None) -> SignedIn:
        """A new session for an API token; 401 (TokenRejected) for a bad token."""
        principal = self.tokens.authenticate((token_secret or "").strip() or None)
        return self._open(principal)

    def authenticate(self, session_secret: str | None) -> SignedIn:
        """The signed-in browser a cookie stands for; 401 when the session is unknown, signed
        out or expired, or its token no longer authenticates."""
        if not session_secret or not session_secret.startswith(SESSION_PREFIX):
            raise Unauthorized("not signed in")
        now = self.clock()
        with self.db.session() as session:
            row = repo.live(session, _hash(session_secret), "session", now)
            token_id = row.token_id if row is not None else None
        if token_id is None:
            raise Unauthorized("the session has ended: sign in again")
        return SignedIn(self.tokens.principal_of(token_id), session_secret)

    def create_link(self, principal: Principal) -> str:
        """A one-time sign-in link's secret for the caller's token, usable once within
        :data:`LINK_TTL`."""
        return self._issue(principal, "link")

    def redeem_link(self, link_secret: str | None) -> SignedIn:
        """A new session from a one-time link; a link works once, and not after it expires."""
        if not link_secret or not link_secret.startswith(LINK_PREFIX):
            raise Unauthorized("invalid sign-in link")
        now = self.clock()
        with self.db.session(write=True) as session:
            row = repo.live(session, _hash(link_secret), "link", now)
            token_id = row.token_id if row is not None else None
            if token_id is None or not repo.end(session, _hash(link_secret), "link", now):
                raise Unauthorized("the sign-in link has been used or has expired")
        return self._open(self.tokens.principal_of(token_id))

    def sign_out(self, session_secret: str) -> None:
        with self.db.session(write=True) as session:
            repo.end(session, _hash(session_secret), "session", self.clock())

    def _open(self, principal: Principal) -> SignedIn:
        return SignedIn(principal, self._issue(principal, "session"))

    def _issue(self, principal: Principal, kind: str) -> str:
        """A new secret of ``kind`` ("session" or "link") for the principal's token, stored
        as its hash with the kind's lifetime; a new session also forgets long-expired rows."""
        prefix, ttl = (
            (SESSION_PREFIX, SESSION_TTL) if kind == "session" else (LINK_PREFIX, LINK_TTL)
        )
        secret = prefix + secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.session(write=True) as session:
            if kind == "session":
                repo.purge(session, now - timedelta(days=1))
            repo.add(
                session,
                secret_hash=_hash(secret),
                token_id=principal.token_id,
                kind=kind,
                now=now,
                expires_at=now + ttl,
            )
        return secret
