"""Studies: hyperparameter searches whose trials are jobs (start, list, show, trials, cancel)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.wire.studies import Importances, Study, StudyList, StudyRequest, TrialList

router = APIRouter(tags=["studies"])


@router.post("/studies", status_code=201, response_model=Study)
def create_study(body: StudyRequest, principal: Member, request: Request) -> Study:
    """Start a study: every refusal (the space, the sampler, the trials' job) comes now."""
    return services_of(request).studies.create(principal, body)


@router.get("/studies", response_model=StudyList)
def list_studies(
    principal: Viewer, request: Request, limit: int = Query(100, ge=1, le=1000)
) -> StudyList:
    """The tenant's studies, newest first."""
    return services_of(request).studies.list_studies(principal, limit)


@router.get("/studies/{study_id}", response_model=Study)
def get_study(study_id: str, principal: Viewer, request: Request) -> Study:
    """A study, its trials counted by state and its best trial so far."""
    return services_of(request).studies.get(principal, study_id)


@router.get("/studies/{study_id}/trials", response_model=TrialList)
def list_trials(study_id: str, principal: Viewer, request: Request) -> TrialList:
    """Every trial of the study, by number: its parameters, job, state and value."""
    return services_of(request).studies.trials(principal, study_id)


@router.get("/studies/{study_id}/importances", response_model=Importances)
def study_importances(study_id: str, principal: Viewer, request: Request) -> Importances:
    """Each searched parameter's share of the metric's variance over the complete trials."""
    return services_of(request).studies.importances(principal, study_id)


@router.post("/studies/{study_id}/cancel", response_model=Study)
def cancel_study(study_id: str, principal: Member, request: Request) -> Study:
    """End the study now: its running trials' jobs are cancelled."""
    return services_of(request).studies.cancel(principal, study_id)
