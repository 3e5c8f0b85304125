"""Quota enforcement over a real metadata store: the server's defaults, a tenant's own
limits, and what each check counts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nimbus.db.engine import Database
from nimbus.errors import Forbidden, QuotaExceeded, StorageQuotaExceeded
from nimbus.security import Principal, Role
from nimbus.services.quotas import QuotaDefaults, QuotaService, human_bytes
from nimbus.wire.quotas import SetQuotas


def test_defaults_apply_until_a_tenant_has_its_own(
    db: Database, make_principal: Callable[..., Principal]
) -> None:
    member = make_principal("acme")
    operator = make_principal("default", Role.ADMIN)
    service = QuotaService(db, QuotaDefaults(jobs=5, bytes=100))
    with db.session() as session:
        assert service.limits(session, member.tenant_id) == QuotaDefaults(jobs=5, bytes=100)
        service.check_bytes(session, member.tenant_id, 100, "data")
        with pytest.raises(StorageQuotaExceeded, match="storage quota of 100 bytes"):
            service.check_bytes(session, member.tenant_id, 101, "data")
    shown = service.set(operator, "acme", SetQuotas(jobs=0, replicas=3))
    assert shown.limits.jobs == 0 and shown.limits.bytes == 100 and shown.limits.replicas == 3
    with db.session() as session:
        with pytest.raises(QuotaExceeded, match=r"concurrent jobs \(0\)"):
            service.check_jobs(session, member.tenant_id, "acme")
        # A scale-down or a settings change never trips the quota.
        service.check_deployments(session, member.tenant_id, "acme", deployments=0, replicas=-2)
        with pytest.raises(QuotaExceeded, match="quota of replicas"):
            service.check_deployments(session, member.tenant_id, "acme", deployments=1, replicas=4)
    back = service.set(operator, "acme", SetQuotas(jobs=None))
    assert back.limits.jobs == 5  # the default again
    with pytest.raises(Forbidden):
        service.set(make_principal("acme", Role.ADMIN), None, SetQuotas(jobs=100))


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (10 * 1024**3, "10.0 GiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text
