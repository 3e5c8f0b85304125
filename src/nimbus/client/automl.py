"""Automatic model selection: an AutoML job (``model: automl``) and its leaderboard."""

from __future__ import annotations

from typing import Any

from nimbus.client.datasets import DatasetRef
from nimbus.client.jobs import JobsMixin
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import parse_duration
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
        **job: Any,
    ) -> Job:
        """Start an AutoML job on ``dataset`` with a time ``budget`` (``"10m"``, ``"90s"``
        or seconds); returns the job (state ``queued``). ``metric``: ``accuracy`` (the
        default), ``macro_f1`` or ``balanced_accuracy``, on the validation split. ``job``:
        options as for :meth:`submit_job` (``cpus``, ``memory``, ``priority``, ...). Its
        winner becomes the job's model: register it with :meth:`register_model`."""
        try:
            parse_duration(budget)  # a typo fails here, before anything is sent
        except InvalidInput as exc:
            raise InvalidInput(f"invalid budget: {exc.message}", field="budget") from None
        params: dict[str, Any] = {"budget": budget}
        if metric is not None:
            params["metric"] = metric
        return self.submit_job(dataset, AUTOML_MODEL, params=params, seed=seed, **job)


def leaderboard_of(job: Job) -> dict[str, Any] | None:
    """The leaderboard an AutoML job recorded with its result (None before it has one):
    ``metric``, ``budget_seconds``, ``search_seconds``, ``trials``, ``best`` and
    ``leaderboard`` (rows of ``trial``, ``family``, ``params``, ``score``, ``fit_seconds``)."""
    found = (job.evaluation or {}).get("automl")
    return found if isinstance(found, dict) else None
