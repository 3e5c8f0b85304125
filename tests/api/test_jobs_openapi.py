"""The OpenAPI document of a real server describes every JSON response of the jobs routes
and of the job API with its wire model (and the JSON bodies the job API reads itself)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from nimbus.wire import code, job_api, jobs
from tests.helpers import ServerProcess

JOB = "/api/v1/jobs/{job_id}"
ATTEMPT = "/api/v1/job-api/{attempt_id}"

JSON_ROUTES: dict[tuple[str, str], tuple[str, type[BaseModel]]] = {
    ("post", "/api/v1/code"): ("201", code.CodeArtifact),
    ("post", "/api/v1/jobs"): ("201", jobs.Job),
    ("get", "/api/v1/jobs"): ("200", jobs.JobList),
    ("get", "/api/v1/jobs/compare"): ("200", jobs.JobList),
    ("get", JOB): ("200", jobs.Job),
    ("post", f"{JOB}/cancel"): ("200", jobs.Job),
    ("get", f"{JOB}/metrics"): ("200", jobs.JobMetrics),
    ("get", f"{JOB}/logs"): ("200", jobs.LogPage),  # or server-sent events with follow=true
    ("get", f"{ATTEMPT}/spec"): ("200", job_api.AttemptSpec),
    ("post", f"{ATTEMPT}/heartbeat"): ("200", job_api.HeartbeatReply),
    ("post", f"{ATTEMPT}/metrics"): ("200", job_api.Ok),
    ("post", f"{ATTEMPT}/progress"): ("200", job_api.Ok),
    ("post", f"{ATTEMPT}/result"): ("200", job_api.Ok),
    ("put", f"{ATTEMPT}/checkpoints/{{step}}"): ("201", job_api.StoredCheckpoint),
    ("get", f"{ATTEMPT}/checkpoints/latest/ref"): ("200", job_api.StoredCheckpoint),
    ("put", f"{ATTEMPT}/artifacts/{{name}}"): ("201", job_api.Artifact),
}
BYTE_ROUTES = {  # blob streams: no JSON to describe
    ("get", f"{JOB}/artifacts/{{name}}"),
    ("get", f"{ATTEMPT}/blobs/{{key}}"),
    ("get", f"{ATTEMPT}/checkpoints/latest"),
}
READ_BODIES: dict[
    str, type[BaseModel]
] = {  # JSON bodies the job API reads itself (for its size limit)
    f"{ATTEMPT}/metrics": job_api.MetricsRequest,
    f"{ATTEMPT}/progress": job_api.ProgressRequest,
    f"{ATTEMPT}/result": job_api.ResultRequest,
}
MINE = ("/api/v1/jobs", "/api/v1/code", "/api/v1/job-api/")


@pytest.fixture(scope="module")
def document(shared_server: ServerProcess) -> dict[str, Any]:
    with shared_server.client() as http:
        response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    assert ref.startswith("#/components/schemas/"), schema
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_every_route_is_listed_here(document: dict[str, Any]) -> None:
    operations = {
        (method, path)
        for path, item in document["paths"].items()
        if path.startswith(MINE)
        for method in item
    }
    assert operations == set(JSON_ROUTES) | BYTE_ROUTES


@pytest.mark.parametrize(("route", "expected"), list(JSON_ROUTES.items()), ids=str)
def test_each_json_response_is_described_by_its_wire_model(
    document: dict[str, Any], route: tuple[str, str], expected: tuple[str, type[BaseModel]]
) -> None:
    method, path = route
    status, model = expected
    responses = document["paths"][path][method]["responses"]
    schema = resolve(document, responses[status]["content"]["application/json"]["schema"])
    assert schema["title"] == model.__name__
    assert set(schema["properties"]) == set(model.model_fields)


def test_the_job_api_bodies_are_described(document: dict[str, Any]) -> None:
    for path, model in READ_BODIES.items():
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["title"] == model.__name__
        assert set(body["schema"]["properties"]) == set(model.model_fields), path
    submit = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    assert resolve(document, submit["application/json"]["schema"])["title"] == "SubmitRequest"


def test_times_are_strings_and_states_an_enum(document: dict[str, Any]) -> None:
    ok = document["paths"][JOB]["get"]["responses"]["200"]["content"]["application/json"]
    job = resolve(document, ok["schema"])["properties"]
    assert job["created_at"]["type"] == "string"
    state = resolve(document, job["state"])
    assert state["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]
