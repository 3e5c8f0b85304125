"""``nimbus quotas show|set`` against a real server: operators set, tenants are held to it."""

from __future__ import annotations

from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess


def test_quotas_set_and_show(nimbus: Nimbus, shared_server: ServerProcess) -> None:
    operator = {"NIMBUS_URL": shared_server.url, "NIMBUS_TOKEN": shared_server.admin_token}
    nimbus.env.update(operator)
    shown = nimbus.json(
        "quotas",
        "set",
        "--tenant",
        "clitenant",
        "--jobs",
        "4",
        "--replicas",
        "2",
        "--bytes",
        "10G",
    )
    assert shown["tenant"] == "clitenant"
    assert shown["limits"] == {
        "jobs": 4,
        "deployments": None,
        "replicas": 2,
        "bytes": 10 * 1024**3,
    }
    assert shown["usage"] == {"jobs": 0, "deployments": 0, "replicas": 0, "bytes": 0}
    again = nimbus.json("quotas", "set", "--tenant", "clitenant", "--jobs", "unlimited")
    assert again["limits"]["jobs"] is None and again["limits"]["replicas"] == 2
    assert nimbus.json("quotas", "show", "--tenant", "clitenant") == again
    assert nimbus.json("quotas", "show")["tenant"] == "default"
    table = nimbus("quotas", "show", "--tenant", "clitenant").stdout
    assert "clitenant" in table and "replicas" in table and "unlimited" in table
    assert "10.7 GB" in table

    nimbus("quotas", "set", "--tenant", "clitenant", code=2)  # nothing to set
    nimbus("quotas", "set", "--tenant", "clitenant", "--jobs", "many", code=2)
    nimbus("quotas", "set", "--tenant", "clitenant", "--bytes", "lots", code=2)
    tenant_admin = nimbus.json(
        "tokens", "create", "--name", "qadmin", "--role", "admin", "--tenant", "clitenant"
    )["token"]
    as_tenant = {"NIMBUS_TOKEN": tenant_admin}
    refused = nimbus("quotas", "set", "--jobs", "100", code=3, env=as_tenant)
    assert "only admins of the 'default' tenant" in refused.stderr
    assert nimbus.json("quotas", "show", env=as_tenant)["limits"]["replicas"] == 2
    nimbus("quotas", "show", "--tenant", "default", code=3, env=as_tenant)
