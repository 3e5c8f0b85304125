"""Job-scoped tokens: one per attempt, handed to the job process, only its hash stored
(:func:`nimbus.security.hash_token`, as for API tokens)."""

from __future__ import annotations

import secrets

TOKEN_PREFIX = "njt_"  # tells a job token from an API token at a glance (and in leak scanners)


def mint_token() -> str:
    """A fresh 256-bit secret for one attempt."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)
