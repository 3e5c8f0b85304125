"""``nimbus demo``: the user's journey end to end on bundled data, against a throwaway server.

The journey is a list of :class:`Step` s run in order over one :class:`DemoRun`; later
issues append steps (train, evaluate, deploy, predict). The server is always stopped and the
temporary NIMBUS_HOME removed, whatever happens.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from nimbus.cli.common import JsonOption, console, print_json, transfer
from nimbus.cli.embedded import EmbeddedServer
from nimbus.cli.render import datasets_table, version_table
from nimbus.client import Client
from nimbus.config import load_settings
from nimbus.demo_data import SOURCE, write_digits_zip

DATASET = "digits"


@dataclass
class DemoRun:
    """What the steps share: where things live, the server, the client, and the results."""

    workdir: Path
    out: Console
    quiet: bool
    server: EmbeddedServer | None = None
    client: Client | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> Client:
        assert self.client is not None, "the server step runs first"
        return self.client

    def say(self, *objects: Any, **kwargs: Any) -> None:
        """Human output; silent under --json."""
        if not self.quiet:
            self.out.print(*objects, **kwargs)


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[DemoRun], None]


def start_server(run: DemoRun) -> None:
    run.server = EmbeddedServer(run.workdir / "home")
    run.say(
        f"Starting `python -m nimbus.server` on {run.server.url} "
        f"with a temporary NIMBUS_HOME ({run.server.home})…",
        markup=False,
    )
    token = run.server.start()
    run.client = Client(run.server.url, token, settings=load_settings(home=run.server.home))
    health = run.api.health()
    who = run.api.whoami()
    run.results["server"] = {"url": run.server.url, "version": health.get("version")}
    run.say(
        f"Server {health.get('version')} is up; signed in with the bootstrap admin token "
        f"({who.get('role')} in tenant {who.get('tenant')}).",
        markup=False,
    )


def generate_data(run: DemoRun) -> None:
    run.say(f"Source: {SOURCE} — no download needed.", markup=False)
    data = write_digits_zip(run.workdir / f"{DATASET}.zip")
    run.results["data"] = {
        "source": SOURCE,
        "file": data.path.name,
        "images": data.count,
        "per_class": data.per_class,
    }
    run.say(
        f"Wrote {data.path.name}: {data.count} PNG images of 8x8 grayscale digits "
        f"(0..16 scaled to 0..255) in one folder per class, "
        f"{len(data.classes)} classes.",
        markup=False,
    )


def upload_data(run: DemoRun) -> None:
    path = run.workdir / f"{DATASET}.zip"
    with transfer(
        f"uploading {path.name}", not run.quiet, after="server is preparing the data"
    ) as progress:
        version = run.api.upload_dataset(DATASET, path, progress=progress)
    run.results["version"] = version
    run.say(
        f"Stored as {version['dataset']}:{version['version']} "
        f"(content hash {str(version['content_hash'])[:12]}…).",
        markup=False,
    )


def show_version(run: DemoRun) -> None:
    version = run.api.get_version(f"{DATASET}:{run.results['version']['version']}")
    run.say(version_table(version))


def list_datasets(run: DemoRun) -> None:
    datasets = run.api.list_datasets()
    run.results["datasets"] = datasets
    run.say(datasets_table(datasets))


STEPS: list[Step] = [
    Step("Start an embedded Nimbus server", start_server),
    Step("Generate the bundled dataset", generate_data),
    Step("Upload it as a versioned dataset", upload_data),
    Step("Inspect the dataset version", show_version),
    Step("List datasets", list_datasets),
]


def run_steps(run: DemoRun, steps: list[Step]) -> None:
    """Run ``steps`` in order with headings, then always stop the server."""
    try:
        for number, step in enumerate(steps, 1):
            if not run.quiet:
                run.out.print()
                run.out.rule(f"[bold]Step {number}/{len(steps)}[/] · {step.title}", align="left")
            step.run(run)
    finally:
        if run.client is not None:
            run.client.close()
        if run.server is not None:
            run.say()
            run.say("Stopping the demo server.", style="dim")
            run.server.stop()


def demo(as_json: JsonOption = False) -> None:
    """Run the journey on bundled data (scikit-learn's digits) against a throwaway server."""
    with tempfile.TemporaryDirectory(prefix="nimbus-demo-") as tmp:
        run = DemoRun(Path(tmp), console(), quiet=as_json)
        run_steps(run, STEPS)
    if as_json:
        print_json({"ok": True, **run.results})
    else:
        run.out.print(
            "\nDemo finished: the data is in Nimbus, versioned and ready to train on.",
            style="bold green",
        )
