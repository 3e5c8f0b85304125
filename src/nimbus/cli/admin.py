"""``nimbus admin rotate-key``: operations run on the control plane's machine, with its
settings (its NIMBUS_HOME, database and master key), not through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, print_json, settings

app = typer.Typer(
    help="Operate the control plane's own machine (run where `nimbus server` runs).",
    no_args_is_help=True,
)


@app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[
        Path,
        typer.Option(
            help="File holding the new master key (base64 of 32 bytes: openssl rand -base64 32)"
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Re-wrap every tenant's data key under a new master key, in one transaction; the blobs
    are not rewritten. The current key comes from NIMBUS_ENCRYPTION_KEY(_FILE), as for the
    server; afterwards, start the servers with the new key."""
    # Imported here: the server side pulls in SQLAlchemy and the rest of the control plane.
    from nimbus.server import rotate_encryption_key

    old_id, new_id, count = rotate_encryption_key(settings(), new_key_file)
    if as_json:
        print_json({"old_key_id": old_id, "new_key_id": new_id, "rewrapped": count}, line=True)
    else:
        typer.echo(
            f"re-wrapped {count} data key(s) from master key {old_id} to {new_id}: restart "
            "the servers with the new key (NIMBUS_ENCRYPTION_KEY or NIMBUS_ENCRYPTION_KEY_FILE)"
        )
