"""Automatic model selection: an AutoML job (``model: automl``) and its leaderboard."""

from __future__ import annotations

import time
from typing import Any

from nimbus.client.datasets import DatasetRef
from nimbus.client.jobs import JobsMixin
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import JobState, parse_duration
from nimbus.runtime.hyperparams import AUTOML_MODEL
from nimbus.wire.jobs import Job


class AutomlMixin(JobsMixin):
    """``nimbus automl``: one job that searches the built-in families within a budget."""

    def start_automl(
        self,
        dataset: str | DatasetRef,
        budget: str | float,
        *,
        metric: str | None = None,
        seed: int | None = None,
        register: str | None = None,
        **job: Any,
    ) -> Job:
        """Start an AutoML job on ``dataset`` with a time ``budget`` (``"10m"``, ``"90s"``
        or seconds); returns the job (state ``queued``). ``metric``: ``accuracy`` (the
        default), ``macro_f1`` or ``balanced_accuracy``, on the validation split. ``job``:
        options as for :meth:`submit_job` (``cpus``, ``memory``, ``priority``, ...). Its
        winner becomes the job's model; with ``register`` (a model name) the server
        registers it as a new version of that name when the job succeeds (see
        :meth:`wait_automl_registration`), else register it with :meth:`register_model`."""
        try:
            parse_duration(budget)  # a typo fails here, before anything is sent
        except InvalidInput as exc:
            raise InvalidInput(f"invalid budget: {exc.message}", field="budget") from None
        params: dict[str, Any] = {"budget": budget}
        if metric is not None:
            params["metric"] = metric
        if register is not None:
            params["register"] = register
        return self.submit_job(dataset, AUTOML_MODEL, params=params, seed=seed, **job)

    def wait_automl_registration(
        self, job_id: str, timeout: float = 60.0, poll: float = 0.5
    ) -> tuple[Job, dict[str, Any] | None]:
        """The ended AutoML job and what the server registered for it (see
        :func:`registration_of`): waits up to ``timeout`` seconds for the registration of a
        succeeded job submitted with ``register`` (the server's leader settles it within a
        tick of the job's end); None if it asked for none or it is not settled by then."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            found = registration_of(job)
            asked = job.model == AUTOML_MODEL and bool(job.params.get("register"))
            succeeded = job.state is JobState.SUCCEEDED
            if found is not None or not (asked and succeeded) or time.monotonic() >= deadline:
                return job, found
            time.sleep(poll)


def registration_of(job: Job) -> dict[str, Any] | None:
    """What the server registered for an AutoML job submitted with ``register``, once
    settled: ``{"model", "version", "created"}``, or ``{"model", "error"}`` when the
    registry refused; None before, and for a job that did not succeed."""
    found = (leaderboard_of(job) or {}).get("registered")
    return found if isinstance(found, dict) else None


def leaderboard_of(job: Job) -> dict[str, Any] | None:
    """The leaderboard an AutoML job recorded with its result (None before it has one):
    ``metric``, ``budget_seconds``, ``search_seconds``, ``trials``, ``best`` and
    ``leaderboard`` (rows of ``trial``, ``family``, ``params``, ``score``, ``fit_seconds``)."""
    found = (job.evaluation or {}).get("automl")
    return found if isinstance(found, dict) else None
