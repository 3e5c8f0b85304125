"""Studies: ``/studies`` (hyperparameter searches whose trials are jobs)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from nimbus.client.base import API
from nimbus.client.datasets import DatasetRef, as_ref
from nimbus.client.jobs import JobsMixin, WaitTimeout, is_code_path
from nimbus.studies.space import parse_space
from nimbus.wire.studies import Importances, Study, StudyList, StudyRequest, TrialList


class StudiesMixin(JobsMixin):
    """``/studies``."""

    def start_study(
        self,
        dataset: str | DatasetRef,
        model: str,
        params: Mapping[str, Any] | Sequence[str],
        *,
        metric: str = "val_accuracy",
        direction: str = "maximize",
        trials: int = 20,
        parallel: int = 1,
        sampler: str = "tpe",
        pruner: str = "asha",
        seed: int | None = None,
        timeout: str | float | None = None,
        register_as: str | None = None,
        **job: Any,
    ) -> Study:
        """Start a study. ``params``: the JSON form (``{"lr": {"type": "float", "low": ...,
        "high": ..., "log": true}, "epochs": 5}``) or the CLI's words (``["lr=loguniform(
        1e-4,1e-1)", "epochs=5"]``, checked here first). ``job``: the trials' job options
        as for :meth:`submit_job` (``cpus``, ``gpus``, ``memory``, ...)."""
        model_ref = str(model)
        if is_code_path(model_ref):  # the user's script, uploaded first (as for a job)
            model_ref = self.upload_code(model_ref).ref
        space = parse_space(params).to_dict() if not isinstance(params, Mapping) else dict(params)
        body = StudyRequest(
            dataset=str(as_ref(dataset)),
            model=model_ref,
            params=space,
            metric=metric,
            direction=direction,
            trials=trials,
            parallel=parallel,
            sampler=sampler,
            pruner=pruner,
            seed=seed,
            timeout=timeout,
            register_as=register_as,
            **job,
        )
        return self._call(Study, "POST", f"{API}/studies", json=body.model_dump(mode="json"))

    def get_study(self, study_id: str) -> Study:
        return self._call(Study, "GET", f"{API}/studies/{study_id}")

    def list_studies(self, limit: int = 100) -> list[Study]:
        return self._call(StudyList, "GET", f"{API}/studies", params={"limit": limit}).studies

    def study_trials(self, study_id: str) -> TrialList:
        return self._call(TrialList, "GET", f"{API}/studies/{study_id}/trials")

    def study_importances(self, study_id: str) -> Importances:
        return self._call(Importances, "GET", f"{API}/studies/{study_id}/importances")

    def cancel_study(self, study_id: str) -> Study:
        return self._call(Study, "POST", f"{API}/studies/{study_id}/cancel")

    def wait_study(
        self, study_id: str, *, timeout: float | None = None, poll: float = 1.0
    ) -> Study:
        """Poll until the study has ended; returns it (WaitTimeout after ``timeout`` s)."""
        start = time.monotonic()
        while True:
            study = self.get_study(study_id)
            if study.state != "running":
                return study
            if timeout is not None and time.monotonic() - start >= timeout:
                raise WaitTimeout(f"study {study_id} did not end within {timeout:g}s")
            time.sleep(poll)
