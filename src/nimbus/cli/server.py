"""``nimbus server``: run the control plane (with scheduler, executor and supervisor)."""

from __future__ import annotations

import contextlib
import io
from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, print_json


def server(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [default: NIMBUS_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [default: NIMBUS_PORT or 8600]")
    ] = None,
    keep_deployments: Annotated[
        bool | None,
        typer.Option(
            "--keep-deployments/--stop-deployments",
            help="When the server stops, leave the deployments' replicas serving (the next "
            "start adopts them: an upgrade) or stop them [default: NIMBUS_KEEP_DEPLOYMENTS, "
            "else stop them in a terminal, keep them otherwise]",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            metavar="forkserver|local|ray", help="Where jobs run [default: NIMBUS_EXECUTOR]"
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="The Ray cluster's head, with --executor ray [default: NIMBUS_RAY_ADDRESS]",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the Nimbus control plane until interrupted."""
    # Imported here, not at the top: the server pulls in FastAPI, SQLAlchemy and the ML
    # stack, which every other command would otherwise pay for at start-up.
    from nimbus.config import load_settings
    from nimbus.server import ADMIN_TOKEN_FILE, bootstrap, run

    settings = load_settings(
        host=host,
        port=port,
        keep_deployments=keep_deployments,
        executor=executor,
        ray_address=ray_address,
    )
    url = f"http://{settings.host}:{settings.port}"
    if as_json:
        # Bootstrap first so the JSON line comes first; run() bootstraps again, which finds
        # everything in place and prints nothing. The secret never goes to stdout (it is
        # the server's log): "admin_token" stays null and the line names the file instead.
        with contextlib.redirect_stdout(io.StringIO()):  # its plain-text notice
            bootstrap(settings)
        print_json(
            {
                "url": url,
                "home": str(settings.home),
                "admin_token": None,
                "admin_token_file": str(settings.home / ADMIN_TOKEN_FILE),
            },
            line=True,
        )
    else:
        typer.echo(
            f"Nimbus server on {url} (home {settings.home}; admin token in "
            f"{settings.home / ADMIN_TOKEN_FILE}); Ctrl+C stops it",
            err=True,
        )
    run(settings)
