"""The studies' pages: every study with its progress and best value; a study's trials (pruned
ones marked where they were stopped), best trial, optimisation history chart and parameter
importances; cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.state import services_of
from nimbus.wire.studies import Study, Trial

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

LISTED = 200  # studies on the list page, newest first


def done(study: Study) -> int:
    """Trials that ended (complete, pruned or failed)."""
    return sum(n for state, n in study.counts.items() if state != "running")


def history(study: Study, trials: list[Trial]) -> dict[str, Any]:
    """The optimisation history as a NimbusCharts spec: each complete trial's value by trial
    number, and the best value so far (in the study's direction)."""
    values: list[list[float]] = []
    best: list[list[float]] = []
    pick = max if study.direction == "maximize" else min
    top: float | None = None
    for trial in trials:
        if trial.state != "complete" or trial.value is None:
            continue
        top = trial.value if top is None else pick(top, trial.value)
        values.append([trial.number, trial.value])
        best.append([trial.number, top])
    return {
        "x_label": "trial",
        "y_label": study.metric,
        "series": [
            {"label": study.metric, "points": values},
            {"label": "best so far", "points": best},
        ],
    }


@router.get("/studies")
def studies(request: Request, signed: Browser) -> Response:
    found = services_of(request).studies.summaries(signed.principal, LISTED)
    context = {"studies": found}
    return page(request, signed, "studies.html", context, section="studies")


@router.get("/studies/{study_id}")
def study(request: Request, signed: Browser, study_id: str) -> Response:
    service = services_of(request).studies
    found = service.get(signed.principal, study_id)
    trials = service.trials(signed.principal, study_id).trials
    context = {
        "study": found,
        "trials": trials,
        "done": done(found),
        "history": history(found, trials),
    }
    return page(request, signed, "study.html", context, section="studies")


@router.get("/studies/{study_id}/importances")
def importances(request: Request, signed: Browser, study_id: str) -> Response:
    """The importances' bars (a fragment the study's page loads after it shows: fANOVA
    takes seconds over a hundred trials)."""
    service = services_of(request).studies
    context = {
        "study": service.get(signed.principal, study_id),
        "importances": service.importances(signed.principal, study_id),
    }
    return page(request, signed, "study_importances.html", context, section="studies")


@router.post("/studies/{study_id}/cancel")
def cancel(request: Request, signed: Post, study_id: str) -> Response:
    services_of(request).studies.cancel(signed.principal, study_id)
    return redirect(f"/studies/{study_id}")
