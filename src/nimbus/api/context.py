"""Per-request facts shared between the auth dependency, error handlers and the audit log.

The audit middleware puts an :class:`AuditContext` into the ASGI scope; code further in
fills it (who is calling, which error code answered). It sits at the bottom of the api
package's import graph.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from nimbus.security import Principal

SCOPE_KEY = "nimbus.audit"


@dataclass
class AuditContext:
    principal: Principal | None = None
    error: str | None = None


def audit_context(scope: MutableMapping[str, Any]) -> AuditContext | None:
    """The request's audit context, or None for requests that are not audited."""
    ctx = scope.get(SCOPE_KEY)
    return ctx if isinstance(ctx, AuditContext) else None
