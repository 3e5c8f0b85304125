"""Following a job to its end: its logs, a progress bar per epoch, and its outcome.

Shared by ``nimbus train --follow``, ``nimbus jobs logs -f`` and ``nimbus demo``.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

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
from nimbus.cli.render import duration
from nimbus.errors import NimbusError
from nimbus.jobs.domain import JobState

if TYPE_CHECKING:
    from nimbus.client import Client
    from nimbus.wire import jobs as wire

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


def check_outcome(job: wire.Job) -> None:
    """Raise :class:`JobFailed` / :class:`JobCancelled` unless the job succeeded."""
    reason = job.exit_reason or "no reason given"
    if job.state is JobState.SUCCEEDED:
        return
    if job.state is JobState.CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled ({reason})")
    if job.state is JobState.FAILED:
        raise JobFailed(f"job {job.id} failed: {reason}")
    raise JobFailed(f"job {job.id} is still {job.state}")


def summary(job: wire.Job) -> str:
    """One line on how a job ended."""
    attempts = job.attempts
    line = (
        f"job {job.id} {job.state} in {duration(job.started_at, job.finished_at)} "
        f"({attempts} attempt{'s' if attempts != 1 else ''})"
    )
    accuracy = (job.evaluation or {}).get("accuracy")
    if isinstance(accuracy, int | float):
        line += f"; test accuracy {accuracy:.4f}"
    if job.state is not JobState.SUCCEEDED and job.exit_reason:
        line += f": {job.exit_reason}"
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

    def update(self, data: wire.Progress) -> None:
        """Apply a ``progress`` event."""
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
        epoch, epochs = data.epoch, data.epochs
        total = float(data.batches) if data.batches > 0 else None
        key = (epoch, epochs)
        if key not in self.tasks:
            if self.current is not None:  # the previous epoch is over
                done = self.progress.tasks[self._index(self.current)].total
                self.progress.update(self.current, completed=done)
            label = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
            self.tasks[key] = self.progress.add_task(label, total=total)
        self.current = self.tasks[key]
        self.progress.update(self.current, completed=float(data.batch), total=total)

    def _index(self, task: TaskID) -> int:
        assert self.progress is not None
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task)


def follow(
    api: Client, job_id: str, *, logs: bool = True, bars: Console | None = None, after: int = 0
) -> wire.Job:
    """Stream a job's logs (when ``logs``) and progress bars until it ends; returns the job.

    When a later attempt takes over (a retry, a resume), a line says so.
    """
    from nimbus.wire import jobs as wire

    with EpochBars(bars) as view:
        attempt: int | None = None
        try:
            for event in api.follow_logs(job_id, after=after):
                if isinstance(event, wire.LogChunk) and logs:
                    if attempt is not None and event.attempt != attempt:
                        view.echo(f"--- attempt {event.attempt} ---\n")
                    attempt = event.attempt
                    view.echo(event.data)
                elif isinstance(event, wire.Progress):
                    view.update(event)
        except KeyboardInterrupt:
            raise StoppedFollowing(
                f"stopped following job {job_id}; it goes on "
                f"(`nimbus jobs cancel {job_id}` stops it)"
            ) from None
    job = api.get_job(job_id)
    if not job.state.terminal:
        job = api.wait_job(job_id, timeout=FINAL_STATE_WAIT)
    return job
