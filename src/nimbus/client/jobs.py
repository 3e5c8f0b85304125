"""Training jobs: submit (uploading the user's code first), inspect, follow, wait, cancel.

A ``model`` is a built-in (``cnn``, ``text``, ``mlp``), a code reference returned by
:meth:`JobsMixin.upload_code` (``code:sha256/…``), or a path: a ``.py`` file, a notebook
(``.ipynb``, run with papermill), or a directory with a ``main.py`` (sent as a reproducible
.tar), which :meth:`JobsMixin.submit_job` uploads before it submits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nimbus.client.base import API, BaseClient
from nimbus.client.datasets import DatasetRef, as_ref
from nimbus.client.sse import parse_events
from nimbus.client.transfer import chunks, packed, save
from nimbus.errors import InvalidInput, NimbusError, NotFound, Unavailable
from nimbus.jobs.domain import JobState, parse_duration, parse_memory
from nimbus.runtime.hyperparams import PARAM_SCHEMAS
from nimbus.wire.code import CodeArtifact
from nimbus.wire.jobs import (
    LOG_EVENTS,
    Job,
    JobList,
    JobMetrics,
    LogChunk,
    LogEnd,
    LogEvent,
    LogPage,
    MetricPoint,
)

BUILTIN_MODELS = tuple(PARAM_SCHEMAS)
CODE_PREFIX = "code:"
CODE_ENTRY = "main.py"
CODE_SUFFIXES = (".py", ".ipynb")
RECONNECT_SECONDS = 30.0  # how long a lost log stream or status poll is retried
_NOT_CODE = frozenset({"__pycache__", ".git"})


class WaitTimeout(NimbusError):
    """A job did not reach a final state within the time the caller gave it."""

    status = 504
    code = "timeout"
    exit_code = 6


def is_code_path(model: str) -> bool:
    """Whether ``model`` names the user's code on disk rather than a built-in or a ref."""
    if model in BUILTIN_MODELS or model.startswith(CODE_PREFIX):
        return False
    return model.endswith(CODE_SUFFIXES) or os.sep in model or Path(model).is_dir()


class JobsMixin(BaseClient):
    """``/code``, ``/jobs`` and a job's logs and metrics."""

    # Injectable so waiting and reconnecting are tested without real time passing.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)
    _clock: Callable[[], float] = staticmethod(time.monotonic)

    def upload_code(self, path: str | os.PathLike[str]) -> CodeArtifact:
        """Upload a training script (a ``.py`` file, a ``.ipynb`` notebook, or a directory
        with ``main.py``).

        Returns the code artifact, whose ``ref`` (``code:sha256/…``) a job names it by; the
        same code gives the same ref. ``__pycache__`` and ``.git`` folders are left out.
        """
        source = Path(path)
        if source.is_dir():
            if not (source / CODE_ENTRY).is_file():
                raise InvalidInput(f"{source} has no {CODE_ENTRY}: a code directory needs one")
        elif not source.is_file():
            raise InvalidInput(f"no such file or directory: {source}")
        elif source.suffix not in CODE_SUFFIXES:
            raise InvalidInput(
                f"{source} is not a Python file (.py), a notebook (.ipynb) nor a directory"
            )
        with packed(source, "code", exclude=_NOT_CODE) as (file, filename):
            size = file.stat().st_size
            return self._call(
                CodeArtifact,
                "POST",
                f"{API}/code",
                params={"filename": filename},
                content=chunks(file, size, None),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )

    def submit_job(
        self,
        dataset: str | DatasetRef | None,
        model: str | os.PathLike[str],
        *,
        params: Mapping[str, Any] | None = None,
        cpus: float = 1,
        gpus: int = 0,
        memory: str | int | None = None,
        workers: int = 1,
        resources: Mapping[str, float] | None = None,
        spread: bool = False,
        priority: int = 0,
        max_retries: int | None = None,
        deadline: str | float | None = None,
        seed: int | None = None,
        requirements: Sequence[str] | None = None,
    ) -> Job:
        """Submit a training job; returns the job (state ``queued``).

        ``requirements`` (a requirements file's lines, e.g. ``["tomli==2.0.1"]``) are
        packages the job's environment adds to the platform's: built with uv on the node,
        once per distinct list, and reused (docs/environments.md).

        ``model`` is ``cnn``/``text``/``mlp``, a ``code:…`` ref, or a path to the user's code
        (uploaded first); ``dataset`` may be None for a notebook only. ``memory`` is e.g.
        ``"4G"`` (per worker), ``deadline`` e.g. ``"2h"``
        or seconds; ``max_retries`` None takes the server's default. ``memory`` and
        ``deadline`` are checked here so
        a typo fails before anything is sent; the server checks everything else (params
        against the model, the model against the dataset's task, resources).
        """
        ref = as_ref(dataset) if dataset is not None else None
        model_ref = str(model)
        if not model_ref:
            raise InvalidInput(
                "a job needs a model: cnn, text, mlp or a path to a .py file or a notebook"
            )
        if is_code_path(model_ref):
            model_ref = self.upload_code(model_ref).ref
        if memory is not None:
            parse_memory(memory)
        if deadline is not None:
            parse_duration(deadline)
        body: dict[str, Any] = {
            "dataset": str(ref) if ref is not None else None,
            "model": model_ref,
            "params": dict(params or {}),
            "cpus": cpus,
            "gpus": gpus,
            "memory": memory,
            "workers": workers,
            "resources": dict(resources) if resources else None,
            "spread": spread or None,
            "priority": priority,
            "max_retries": max_retries,
            "deadline": deadline,
            "seed": seed,
            "environment": {"requirements": list(requirements)} if requirements else None,
        }
        sent = {k: v for k, v in body.items() if v is not None}
        return self._call(Job, "POST", f"{API}/jobs", json=sent)

    def list_jobs(
        self, state: JobState | str | None = None, *, limit: int | None = None
    ) -> list[Job]:
        """The caller's jobs, newest first, optionally only those in ``state``."""
        if state is not None:
            try:
                state = JobState(state)
            except ValueError:
                allowed = ", ".join(s.value for s in JobState)
                raise InvalidInput(f"invalid job state {state!r}: use one of {allowed}") from None
        params = {"state": None if state is None else str(state), "limit": limit}
        return self._call(JobList, "GET", f"{API}/jobs", params=params).jobs

    def get_job(self, job_id: str) -> Job:
        """One job: state, timings, attempts, params, evaluation (once it succeeded)."""
        return self._call(Job, "GET", _job_path(job_id))

    def cancel_job(self, job_id: str) -> Job:
        """Ask for a job to stop; returns it (a running job ends ``cancelled`` shortly)."""
        return self._call(Job, "POST", f"{_job_path(job_id)}/cancel")

    def job_logs(self, job_id: str, *, after: int = 0) -> LogPage:
        """One page of a job's logs after sequence number ``after``; ``next`` is where the
        next page starts, ``done`` says the job ended and nothing is left."""
        params = {"after": after, "follow": False}
        return self._call(LogPage, "GET", f"{_job_path(job_id)}/logs", params=params)

    def iter_logs(self, job_id: str, *, after: int = 0) -> Iterator[LogChunk]:
        """Every log chunk stored so far, page by page (does not wait for more)."""
        while True:
            page = self.job_logs(job_id, after=after)
            yield from page.chunks
            if not page.chunks or page.next <= after:
                return
            after = page.next

    def follow_logs(self, job_id: str, *, after: int = 0) -> Iterator[LogEvent]:
        """The job's events as they happen: :class:`~nimbus.wire.jobs.LogChunk` (a ``log``
        event), :class:`~nimbus.wire.jobs.Progress`, and a last
        :class:`~nimbus.wire.jobs.LogEnd`, after which the iteration stops. Each has the SSE
        event type as its ``event``; event types this SDK does not know are skipped.

        A stream cut short (the server restarting) is resumed after the last log seen, for
        up to :data:`RECONNECT_SECONDS` without an answer; then :class:`Unavailable`.
        """
        path = f"{_job_path(job_id)}/logs"
        lost_since: float | None = None
        while True:
            try:
                with self._stream(
                    "GET",
                    path,
                    params={"after": after, "follow": True},
                    headers={"Accept": "text/event-stream"},
                    timeout=self._no_read_deadline(),
                ) as response:
                    for event in parse_events(response.iter_lines()):
                        lost_since = None
                        kind = LOG_EVENTS.get(event.kind)
                        if kind is None:
                            continue
                        item = kind.model_validate(event.data)
                        if isinstance(item, LogChunk):
                            after = max(after, item.seq)
                        yield item
                        if isinstance(item, LogEnd):
                            return
            except Unavailable:
                pass
            # The stream ended without its `end` event: the server went away. Resume.
            now = self._clock()
            lost_since = now if lost_since is None else lost_since
            if now - lost_since >= RECONNECT_SECONDS:
                raise Unavailable(
                    f"lost the log stream of job {job_id}: {self.url} did not answer "
                    f"for {RECONNECT_SECONDS:.0f}s"
                )
            self._sleep(0.5)

    def job_metrics(self, job_id: str) -> dict[str, list[MetricPoint]]:
        """Every metric series of a job by name (``train_loss``, ...), in step order."""
        return self._call(JobMetrics, "GET", f"{_job_path(job_id)}/metrics").metrics

    def download_job_artifact(
        self, job_id: str, name: str, *, path: str | os.PathLike[str] | None = None
    ) -> Path:
        """Write the job's artifact ``name`` (e.g. ``notebook.ipynb``, the executed notebook
        of a notebook job) to ``path`` (default: ``name`` in the current directory; a
        directory gets ``name`` inside it), checked against its hash; returns the path."""
        job = self.get_job(job_id)
        found = next((a for a in job.artifacts if a.name == name), None)
        if found is None:
            names = ", ".join(a.name for a in job.artifacts) or "none"
            raise NotFound(f"job {job.id} has no artifact {name!r} (it has: {names})")
        out = Path(name if path is None else path)
        if out.is_dir():
            out = out / name
        route = f"{_job_path(job.id)}/artifacts/{quote(name, safe='')}"
        with self._stream("GET", route) as response:
            save(response, out, {"key": found.key, "size": found.size}, 0, found.size, None)
        return out

    def compare_jobs(self, ids: Sequence[str]) -> list[Job]:
        """Several jobs side by side (evaluation included), in the order asked."""
        ids = [_job_id(i) for i in ids]
        if not ids:
            raise InvalidInput("name at least one job to compare")
        params = {"ids": ",".join(ids)}
        return self._call(JobList, "GET", f"{API}/jobs/compare", params=params).jobs

    def wait_job(self, job_id: str, *, timeout: float | None = None, poll: float = 0.5) -> Job:
        """Poll until the job is succeeded, failed or cancelled; returns it.

        Raises :class:`WaitTimeout` after ``timeout`` seconds (None: no limit). The server
        not answering is waited out too (up to :data:`RECONNECT_SECONDS` in a row, or
        ``timeout``), so a restart of the control plane does not end the wait.
        """
        start = self._clock()
        lost_since: float | None = None
        interval = min(0.05, poll)
        while True:
            try:
                job = self.get_job(job_id)
                lost_since = None
                if job.state.terminal:
                    return job
            except Unavailable:
                now = self._clock()
                lost_since = now if lost_since is None else lost_since
                if timeout is None and now - lost_since >= RECONNECT_SECONDS:
                    raise
            elapsed = self._clock() - start
            if timeout is not None and elapsed >= timeout:
                raise WaitTimeout(f"job {job_id} did not finish within {timeout:g}s")
            pause = interval if timeout is None else min(interval, timeout - elapsed)
            self._sleep(max(pause, 0.0))
            interval = min(interval * 2, poll)


def _job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id.strip():
        raise InvalidInput("a job id is required")
    return job_id.strip()


def _job_path(job_id: str) -> str:
    return f"{API}/jobs/{quote(_job_id(job_id), safe='')}"
