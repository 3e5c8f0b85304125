"""Per-tenant quotas: ``/quotas`` (admins see their tenant's; operators set any)."""

from __future__ import annotations

from urllib.parse import quote

from pydantic import ValidationError

from nimbus.client.base import API, BaseClient
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import parse_memory
from nimbus.names import validate_name, whole_number
from nimbus.wire.quotas import Quotas, SetQuotas

NO_LIMIT = ("unlimited", "default", "none")  # words that set a limit back to the default


def _limit(name: str, value: int | str | None) -> int | None:
    """A limit as sent: an int; None (or "unlimited") for the server's default; sizes
    like "10G" for ``bytes``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NO_LIMIT):
        return None
    if name == "bytes":
        return parse_memory(value.strip() if isinstance(value, str) else value)
    number = whole_number(value.strip()) if isinstance(value, str) else value
    if number is None:
        raise InvalidInput(f"invalid {name} quota {value!r}: use a number or 'unlimited'")
    return number


class QuotasMixin(BaseClient):
    """``/quotas`` and ``/quotas/{tenant}``."""

    def quotas(self, tenant: str | None = None) -> Quotas:
        """A tenant's limits and usage (admin; another tenant's: operators only)."""
        if tenant is None:
            return self._call(Quotas, "GET", f"{API}/quotas")
        validate_name(tenant, "tenant")
        return self._call(Quotas, "GET", f"{API}/quotas/{quote(tenant, safe='')}")

    def set_quotas(self, tenant: str | None = None, **limits: int | str | None) -> Quotas:
        """Set some of a tenant's limits (operators only): ``jobs``, ``deployments``,
        ``replicas`` (counts) and ``bytes`` (a count or a size such as ``"10G"``). A limit
        given as None or ``"unlimited"`` goes back to the server's default; limits not
        given are kept."""
        try:
            body = SetQuotas(**{name: _limit(name, value) for name, value in limits.items()})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(f"invalid quota {field}: {first['msg']}") from None
        payload = body.model_dump(mode="json", exclude_unset=True)
        if tenant is None:
            return self._call(Quotas, "PUT", f"{API}/quotas", json=payload)
        validate_name(tenant, "tenant")
        return self._call(Quotas, "PUT", f"{API}/quotas/{quote(tenant, safe='')}", json=payload)
