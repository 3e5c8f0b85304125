"""What every command shares: the ``--json`` option, output, and building the SDK client.

The SDK (httpx, the wire models), the settings (pydantic-settings) and rich's progress bars
are imported when a command uses them, not when its module is loaded: the root help imports
every command module and should not pay for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import filesize
from rich.console import Console

if TYPE_CHECKING:
    from nimbus.client import Client
    from nimbus.config import Settings

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]


def settings() -> Settings:
    """The settings of this invocation (NIMBUS_* variables), read when a command runs."""
    from nimbus.config import load_settings

    return load_settings()


def client(config: Settings | None = None) -> Client:
    """An SDK client from NIMBUS_URL / NIMBUS_TOKEN or the saved login."""
    from nimbus.client import Client

    return Client(settings=config or settings())


def console() -> Console:
    """Human output on stdout (created per call so test runners can capture it)."""
    return Console(highlight=False)


def err_console() -> Console:
    """Progress and notes on stderr, keeping stdout clean."""
    return Console(stderr=True, highlight=False)


def print_json(data: Any, *, line: bool = False) -> None:
    """The machine-readable result of a command on stdout (``line``: one compact line); wire
    models are written as the server sent them."""
    from nimbus.wire.base import dump

    typer.echo(json.dumps(dump(data), indent=None if line else 2, default=str))


def emit(data: Any, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON or let ``render`` draw it for people."""
    if as_json:
        print_json(data)
    else:
        render(console())


def iso(moment: datetime | None) -> str | None:
    """A time as the wire writes it (:func:`nimbus.wire.base.iso`), for tables."""
    from nimbus.wire.base import iso as wire_iso

    return wire_iso(moment)


def human_bytes(size: int | float | None) -> str:
    """1536 -> '1.5 kB' (decimal units, like the progress bars)."""
    return "-" if size is None else filesize.decimal(int(size))


@contextmanager
def transfer(
    description: str, enabled: bool, after: str | None = None
) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (bytes, bytes/s, ETA); yields the SDK callback.

    Shown only when stderr is a terminal and ``enabled`` (commands pass ``not as_json``).

    Once every byte has gone, the description becomes ``after`` (e.g. the server preparing
    the data) while the spinner keeps turning.
    """
    stderr = err_console()
    if not enabled or not stderr.is_terminal:  # no bars in logs and pipes
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )
    task = progress.add_task(description, total=None, start=False)

    def update(done: int, total: int) -> None:
        if not progress.live.is_started:  # only once bytes flow: a failed check shows no bar
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total or None)
        if after and total and done >= total:
            progress.update(task, description=after)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()
