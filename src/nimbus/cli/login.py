"""``nimbus login``: check a token against a server and save both for later commands."""

from __future__ import annotations

from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, emit, settings


def login(
    token: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, help="API token (nbt_…); prompted if omitted"),
    ],
    url: Annotated[
        str | None, typer.Option(help="Server URL [default: NIMBUS_URL or http://127.0.0.1:8600]")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify TOKEN with the server at URL, then save both to NIMBUS_HOME/config (mode 0600)."""
    from nimbus.client import Client, save_login
    from nimbus.wire.base import dump

    config = settings()
    with Client(url or config.url, token.strip(), settings=config) as client:
        who = client.whoami()
        path = save_login(config.home, client.url, token.strip())
        result = {"url": client.url, "config": str(path), **dump(who)}
    emit(
        result,
        as_json,
        lambda out: out.print(
            f"Logged in to {result['url']} as {who.name} "
            f"({who.role} in tenant {who.tenant}); saved to {path}",
            markup=False,
        ),
    )
