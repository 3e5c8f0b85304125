"""The SDK's AutoML method against an in-memory transport: the job it submits, the budget
checked before anything is sent, the leaderboard read from the job."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from nimbus.client.automl import leaderboard_of, registration_of
from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.wire.jobs import Job
from tests.test_client_jobs import job, make


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in ("NIMBUS_URL", "NIMBUS_TOKEN", "NIMBUS_HOME"):
        monkeypatch.delenv(key, raising=False)
    return Settings(home=tmp_path / "home")


def test_start_automl_submits_one_automl_job(settings: Settings) -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(201, json=job(model="automl"))

    with make(handler, settings) as client:
        assert client.start_automl("cancer:2", "10m").model == "automl"
        client.start_automl(
            "cancer", 90, metric="macro_f1", seed=4, cpus=2, priority=3, register="auto"
        )
    assert seen[0]["model"] == "automl" and seen[0]["params"] == {"budget": "10m"}
    assert seen[0]["dataset"] == "cancer:2"
    assert seen[1]["params"] == {"budget": 90, "metric": "macro_f1", "register": "auto"}
    assert (seen[1]["seed"], seen[1]["cpus"], seen[1]["priority"]) == (4, 2, 3)


@pytest.mark.parametrize("budget", ["0s", "soon", -1, "1h30"])
def test_a_bad_budget_is_refused_before_sending(settings: Settings, budget: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with make(handler, settings) as client, pytest.raises(InvalidInput, match="invalid budget"):
        client.start_automl("cancer", budget)  # type: ignore[arg-type]


def test_the_leaderboard_is_read_from_the_jobs_result() -> None:
    board = {"metric": "accuracy", "trials": 2, "leaderboard": []}
    assert leaderboard_of(Job.model_validate(job())) is None
    done = Job.model_validate(job(state="succeeded", evaluation={"accuracy": 1.0, "automl": board}))
    assert leaderboard_of(done) == board
    assert registration_of(done) is None
    note = {"model": "auto", "version": 2, "created": True}
    registered = {"accuracy": 1.0, "automl": {**board, "registered": note}}
    assert registration_of(Job.model_validate(job(evaluation=registered))) == note
