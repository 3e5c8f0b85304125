"""Job-scoped tokens: one per attempt, handed to the job process, only its hash stored."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "njt_"  # tells a job token from an API token at a glance (and in leak scanners)


def mint_token() -> str:
    """A fresh 256-bit secret for one attempt."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the metadata store keeps: the token's SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
