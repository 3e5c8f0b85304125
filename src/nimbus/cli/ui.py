"""``nimbus ui``: open the console in a browser, already signed in."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, client, emit


def ui(
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the link instead of opening a browser.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Open the console of NIMBUS_URL signed in as NIMBUS_TOKEN, through a one-time link
    (valid once, for two minutes: it is a secret until used)."""
    with client() as api:
        link = api.console_link()
    opened = False
    if not no_browser and not as_json:
        opened = webbrowser.open(link)
    emit(
        {"url": link, "opened": opened},
        as_json,
        lambda out: out.print(
            ("Opened the console in your browser. " if opened else "")
            + f"One-time sign-in link (valid for two minutes): {link}",
            markup=False,
        ),
    )
