"""Following a job to its end: its logs, a progress bar per epoch, and its outcome.

Shared by ``nimbus train --follow``, ``nimbus jobs logs -f`` and ``nimbus demo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from nimbus.cli.common import err_console
from nimbus.cli.render import attempt_count, duration
from nimbus.client import Client
from nimbus.client.jobs import is_terminal
from nimbus.errors import NimbusError

FINAL_STATE_WAIT = 60.0  # after the `end` event, how long the final state may take to show


class JobFailed(NimbusError):
    """The job followed ended ``failed`` (exit code 8)."""

    code = "job_failed"
    exit_code = 8


class JobCancelled(NimbusError):
    """The job followed ended ``cancelled`` (exit code 9)."""

    code = "job_cancelled"
    exit_code = 9


class StoppedFollowing(NimbusError):
    """Ctrl-C while following: the job itself goes on (exit code 130, as for SIGINT)."""

    code = "interrupted"
    exit_code = 130


def check_outcome(job: Mapping[str, Any]) -> None:
    """Raise :class:`JobFailed` / :class:`JobCancelled` unless the job succeeded."""
    state, job_id = job.get("state"), job.get("id")
    reason = job.get("exit_reason") or "no reason given"
    if state == "succeeded":
        return
    if state == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled ({reason})")
    if state == "failed":
        raise JobFailed(f"job {job_id} failed: {reason}")
    raise JobFailed(f"job {job_id} is still {state}")


def summary(job: Mapping[str, Any]) -> str:
    """One line on how a job ended."""
    attempts = attempt_count(dict(job))
    line = (
        f"job {job.get('id')} {job.get('state')} in "
        f"{duration(job.get('started_at'), job.get('finished_at'))} "
        f"({attempts} attempt{'s' if attempts != 1 else ''})"
    )
    accuracy = (job.get("evaluation") or {}).get("accuracy")
    if isinstance(accuracy, int | float):
        line += f"; test accuracy {accuracy:.4f}"
    if job.get("state") != "succeeded" and job.get("exit_reason"):
        line += f": {job['exit_reason']}"
    return line


def bar_console(enabled: bool) -> Console | None:
    """stderr, when bars are wanted and it is a terminal (never in pipes and logs)."""
    console = err_console()
    return console if enabled and console.is_terminal else None


class EpochBars:
    """A rich progress bar per epoch (batches done of the epoch), on ``console`` if given.

    The bars start with the first progress event, so a script that reports none shows
    none. While they are live, log text goes through the same console, above the bars.
    """

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.tasks: dict[tuple[Any, Any], TaskID] = {}
        self.current: TaskID | None = None

    def __enter__(self) -> EpochBars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def echo(self, text: str) -> None:
        """Write log text: above the bars while they are live, else plainly to stdout."""
        if self.progress is not None:
            self.progress.console.out(text, end="", highlight=False)
        else:
            typer.echo(text, nl=False)

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a ``progress`` event: ``{"epoch", "epochs", "batch", "batches"}``."""
        if self.console is None:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("batches"),
                TimeElapsedColumn(),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.progress.start()
        epoch, epochs = data.get("epoch"), data.get("epochs")
        batches = data.get("batches")
        total = float(batches) if isinstance(batches, int | float) and batches > 0 else None
        key = (epoch, epochs)
        if key not in self.tasks:
            if self.current is not None:  # the previous epoch is over
                done = self.progress.tasks[self._index(self.current)].total
                self.progress.update(self.current, completed=done)
            label = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
            self.tasks[key] = self.progress.add_task(label, total=total)
        self.current = self.tasks[key]
        batch = data.get("batch")
        completed = float(batch) if isinstance(batch, int | float) else None
        self.progress.update(self.current, completed=completed, total=total)

    def _index(self, task: TaskID) -> int:
        assert self.progress is not None
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task)


def follow(
    api: Client, job_id: str, *, logs: bool = True, bars: Console | None = None, after: int = 0
) -> dict[str, Any]:
    """Stream a job's logs (when ``logs``) and progress bars until it ends; returns the job.

    When a later attempt takes over (a retry, a resume), a line says so.
    """
    with EpochBars(bars) as view:
        attempt: Any = None
        try:
            for event in api.follow_logs(job_id, after):
                if event.kind == "log" and logs:
                    number = event.data.get("attempt")
                    if attempt is not None and number != attempt:
                        view.echo(f"--- attempt {number} ---\n")
                    attempt = number
                    view.echo(str(event.data.get("data", "")))
                elif event.kind == "progress":
                    view.update(event.data)
        except KeyboardInterrupt:
            raise StoppedFollowing(
                f"stopped following job {job_id}; it goes on "
                f"(`nimbus jobs cancel {job_id}` stops it)"
            ) from None
    job = api.get_job(job_id)
    if not is_terminal(job):
        job = api.wait_job(job_id, timeout=FINAL_STATE_WAIT)
    return job
