"""``nimbus tokens create|list|revoke``: API tokens (creating and revoking needs admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, client, emit, err_console
from nimbus.cli.render import tokens_table
from nimbus.security import Role

app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A label for the token, e.g. 'ci'")],
    role: Annotated[Role, typer.Option(help="What the token may do")] = Role.MEMBER,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant of the token [default: your own]")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token. Its secret is printed once and never again."""
    with client() as api:
        token = api.create_token(name, role=role, tenant=tenant)

    def render(out: object) -> None:
        err_console().print(
            "Store this secret now: it is not shown again.", style="yellow", markup=False
        )
        typer.echo(token.token)
        err_console().print(
            f"{token.id}  name={token.name} role={token.role} tenant={token.tenant}",
            markup=False,
        )

    emit(token, as_json, render)


@app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """List the tokens of your tenant (secrets are never shown)."""
    with client() as api:
        items = api.list_tokens()
    emit({"tokens": items}, as_json, lambda out: out.print(tokens_table(items)))


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id (tok_…)")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a token: it stops working at once."""
    with client() as api:
        token = api.revoke_token(token_id)
    emit(
        token,
        as_json,
        lambda out: out.print(f"Revoked {token.id} ({token.name})", markup=False),
    )
