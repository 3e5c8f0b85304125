"""Per-tenant quotas: how many jobs (queued + running), deployments and replicas a tenant
may hold at once, and how many bytes it may store (datasets, code and job artifacts).

A limit set for a tenant (``PUT /quotas/{tenant}``, operators only: a tenant's own admin
could otherwise lift its limits) wins; where none is set, the server's default applies
(``NIMBUS_QUOTA_*``; unset: no limit). The checks run where resources are created, inside
the transaction that records them, and refuse with an error naming the quota: 429
``quota_exceeded`` for counts, 507 ``storage_quota_exceeded`` for bytes. Each check locks
the tenant's row first (:func:`nimbus.db.quotas.lock_tenant`), so concurrent requests of
one tenant, on any number of servers sharing PostgreSQL, cannot both pass it and
overshoot. Uploads are also checked before their body is read, from ``Content-Length``
(:meth:`QuotaService.check_bytes_now`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from nimbus.db import jobs as jobs_repo
from nimbus.db import quotas as repo
from nimbus.db import tenants
from nimbus.db.engine import Database
from nimbus.errors import Forbidden, NotFound, QuotaExceeded, StorageQuotaExceeded
from nimbus.names import validate_name
from nimbus.security import BOOTSTRAP_TENANT, Principal, Role, require_role
from nimbus.wire.quotas import QuotaLimits, Quotas, QuotaUsage, SetQuotas


@dataclass(frozen=True)
class QuotaDefaults:
    """The limits of a tenant that has none of its own (None: no limit)."""

    jobs: int | None = None
    deployments: int | None = None
    replicas: int | None = None
    bytes: int | None = None


def human_bytes(count: int) -> str:
    """``1.5 GiB``-style sizes for messages."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class QuotaService:
    """The quotas of every tenant: shown to its admins, set by operators, enforced by the
    services that create what they count."""

    def __init__(
        self,
        db: Database,
        defaults: QuotaDefaults | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.defaults = defaults or QuotaDefaults()
        self.clock = clock

    # -- the API ------------------------------------------------------------------------

    def show(self, principal: Principal, tenant: str | None = None) -> Quotas:
        """A tenant's limits and usage: the caller's own (admins), any (operators)."""
        require_role(principal, Role.ADMIN)
        name = self._tenant_name(principal, tenant)
        if name != principal.tenant and not principal.is_operator:
            raise Forbidden(
                f"only admins of the {BOOTSTRAP_TENANT!r} tenant may see other tenants' quotas"
            )
        with self.db.session() as session:
            row = tenants.get_by_name(session, name)
            if row is None:
                raise NotFound(f"tenant {name!r} not found")
            return self._view(session, row.id, name)

    def set(self, principal: Principal, tenant: str | None, body: SetQuotas) -> Quotas:
        """Set some of a tenant's limits (a null: back to the server's default). Operators
        only; the tenant is created if it does not exist yet, like ``tokens create``."""
        require_role(principal, Role.ADMIN)
        if not principal.is_operator:
            raise Forbidden(f"only admins of the {BOOTSTRAP_TENANT!r} tenant may set quotas")
        name = self._tenant_name(principal, tenant)
        changes = {field: getattr(body, field) for field in body.model_fields_set}
        with self.db.session(write=True) as session:
            row = tenants.get_or_create(session, name)
            repo.put(session, row.id, changes, self.clock(), principal.token_id)
            return self._view(session, row.id, name)

    @staticmethod
    def _tenant_name(principal: Principal, tenant: str | None) -> str:
        return validate_name(tenant, "tenant name") if tenant else principal.tenant

    def _view(self, session: Session, tenant_id: int, name: str) -> Quotas:
        used = repo.usage(session, tenant_id)
        return Quotas(
            tenant=name,
            limits=QuotaLimits(**asdict(self.limits(session, tenant_id))),
            usage=QuotaUsage(**asdict(used)),
        )

    # -- enforcement --------------------------------------------------------------------

    def limits(self, session: Session, tenant_id: int) -> QuotaDefaults:
        """The tenant's limits in force: its own where set, else the defaults."""
        row = repo.get(session, tenant_id)
        if row is None:
            return self.defaults
        values = {
            f.name: getattr(row, f.name)
            if getattr(row, f.name) is not None
            else getattr(self.defaults, f.name)
            for f in fields(QuotaDefaults)
        }
        return QuotaDefaults(**values)

    def check_jobs(self, session: Session, tenant_id: int, tenant: str) -> None:
        """Refuse one more job when the tenant has its quota of queued and running ones."""
        limit = self.limits(session, tenant_id).jobs
        if limit is None:
            return
        repo.lock_tenant(session, tenant_id)
        active = jobs_repo.count_active(session, tenant_id)
        if active >= limit:
            raise QuotaExceeded(
                f"tenant {tenant!r} has {active} queued or running jobs, its quota of "
                f"concurrent jobs ({limit}); wait for one to end, cancel one, or ask an "
                "operator to raise it (nimbus quotas set --jobs N)",
                quota="jobs",
                limit=limit,
                used=active,
            )

    def check_deployments(
        self, session: Session, tenant_id: int, tenant: str, *, deployments: int, replicas: int
    ) -> None:
        """Refuse ``deployments`` more deployments and ``replicas`` more replicas (either
        may be 0, and replicas negative for a scale-down) past the tenant's quotas."""
        limits = self.limits(session, tenant_id)
        if limits.deployments is None and limits.replicas is None:
            return
        repo.lock_tenant(session, tenant_id)
        count, held = repo.deployments(session, tenant_id)
        if (
            deployments > 0
            and limits.deployments is not None
            and count + deployments > limits.deployments
        ):
            raise QuotaExceeded(
                f"tenant {tenant!r} has {count} deployments, its quota of deployments "
                f"({limits.deployments}); delete one or ask an operator to raise it "
                "(nimbus quotas set --deployments N)",
                quota="deployments",
                limit=limits.deployments,
                used=count,
            )
        if replicas > 0 and limits.replicas is not None and held + replicas > limits.replicas:
            raise QuotaExceeded(
                f"{replicas} more replicas would take tenant {tenant!r} to "
                f"{held + replicas}, past its quota of replicas ({limits.replicas}, "
                f"{held} in use); scale a deployment down or ask an operator to raise "
                "it (nimbus quotas set --replicas N)",
                quota="replicas",
                limit=limits.replicas,
                used=held,
            )

    def check_bytes(self, session: Session, tenant_id: int, adding: int, what: str) -> None:
        """Refuse storing ``adding`` more bytes (``what`` says which) past the tenant's
        storage quota: 507, nothing of it is kept."""
        limit = self.limits(session, tenant_id).bytes
        if limit is None:
            return
        repo.lock_tenant(session, tenant_id)
        used = repo.stored_bytes(session, tenant_id)
        if used + adding > limit:
            raise StorageQuotaExceeded(
                f"storing {what} ({human_bytes(adding)}) would take this tenant past its "
                f"storage quota of {human_bytes(limit)} ({human_bytes(used)} used by datasets, "
                "code and artifacts); delete some, or ask an operator to raise it "
                "(nimbus quotas set --bytes N)",
                quota="bytes",
                limit=limit,
                used=used,
            )

    def check_bytes_now(self, tenant_id: int, adding: int, what: str) -> None:
        """:meth:`check_bytes` in a transaction of its own: an early refusal, before work
        (ingest, storing blobs) the final check would throw away."""
        with self.db.session() as session:
            self.check_bytes(session, tenant_id, adding, what)
