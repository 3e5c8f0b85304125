"""Tracked runs: ``/runs`` (what MLflow clients logged to this server, beside the jobs)."""

from __future__ import annotations

from collections.abc import Sequence

from nimbus.client.base import API, BaseClient
from nimbus.wire.tracking import TrackedRun, TrackedRunList


class RunsMixin(BaseClient):
    """``/runs``."""

    def list_runs(self, experiment: str | None = None, *, limit: int = 100) -> list[TrackedRun]:
        """The tenant's runs logged through the MLflow API (of one experiment), newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if experiment is not None:
            params["experiment"] = experiment
        return self._call(TrackedRunList, "GET", f"{API}/runs", params=params).runs

    def get_run(self, run_id: str) -> TrackedRun:
        """A run by id; a job id answers the job as a run (params, latest metrics)."""
        return self._call(TrackedRun, "GET", f"{API}/runs/{run_id}")

    def compare_runs(self, run_ids: Sequence[str]) -> list[TrackedRun]:
        """Runs and jobs side by side, in the order given."""
        ids = ",".join(run_ids)
        return self._call(TrackedRunList, "GET", f"{API}/runs/compare", params={"ids": ids}).runs
