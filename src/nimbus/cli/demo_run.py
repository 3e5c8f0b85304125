"""What the demo's steps share: the run state, the step type and the demo's own error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from nimbus.cli.embedded import EmbeddedServer
from nimbus.client import Client
from nimbus.errors import NimbusError


class DemoFailed(NimbusError):
    """A step of the demo did not reach its mark."""

    code = "demo_failed"
    exit_code = 1


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
