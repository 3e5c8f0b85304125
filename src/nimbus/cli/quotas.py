"""``nimbus quotas show|set``: per-tenant quotas (admins see theirs; operators set any)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nimbus.cli.common import JsonOption, client, emit, human_bytes

if TYPE_CHECKING:
    from nimbus.wire.quotas import Quotas

app = typer.Typer(help="Show and set per-tenant quotas.", no_args_is_help=True)

TenantOption = Annotated[str | None, typer.Option(help="Tenant whose quotas [default: your own]")]


def quotas_table(quotas: Quotas) -> Table:
    """Usage against each limit, one row per quota."""
    table = Table(title=f"Quotas of tenant {quotas.tenant}", title_justify="left")
    for column in ("quota", "used", "limit"):
        table.add_column(column, justify="left" if column == "quota" else "right")
    for name in ("jobs", "deployments", "replicas", "bytes"):
        used, limit = getattr(quotas.usage, name), getattr(quotas.limits, name)
        show = human_bytes if name == "bytes" else str
        table.add_row(name, show(used), "unlimited" if limit is None else show(limit))
    return table


@app.command("show")
def show(tenant: TenantOption = None, as_json: JsonOption = False) -> None:
    """Show a tenant's limits and what it uses now (admin; other tenants: operators)."""
    with client() as api:
        quotas = api.quotas(tenant)
    emit(quotas, as_json, lambda out: out.print(quotas_table(quotas)))


@app.command("set")
def set_(
    tenant: TenantOption = None,
    jobs: Annotated[str | None, typer.Option(help="Queued + running jobs, or 'unlimited'")] = None,
    deployments: Annotated[str | None, typer.Option(help="Deployments, or 'unlimited'")] = None,
    replicas: Annotated[
        str | None, typer.Option(help="Replicas of all deployments, or 'unlimited'")
    ] = None,
    bytes_: Annotated[
        str | None,
        typer.Option(
            "--bytes", help="Bytes stored by datasets, code and artifacts: 10G, or 'unlimited'"
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Set some of a tenant's limits (operators: admins of tenant 'default'); the limits
    not given are kept."""
    given = {"jobs": jobs, "deployments": deployments, "replicas": replicas, "bytes": bytes_}
    limits = {name: value for name, value in given.items() if value is not None}
    if not limits:
        raise typer.BadParameter("give at least one of --jobs, --deployments, --replicas, --bytes")
    with client() as api:
        quotas = api.set_quotas(tenant, **limits)
    emit(quotas, as_json, lambda out: out.print(quotas_table(quotas)))
