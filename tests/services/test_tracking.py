"""MLflow-compatible tracking below HTTP: the service and its store on SQLite and
PostgreSQL (runs, params, metrics, searches, the registry, a job read as a run, tenants),
and the pure parts (the search syntax, artifact paths, directory listings)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import inspect

from nimbus.db import job_outputs
from nimbus.db import jobs as job_repo
from nimbus.db.engine import Database
from nimbus.db.migrate import alembic_config, upgrade
from nimbus.db.tables import Tenant
from nimbus.errors import Conflict, Forbidden, InvalidInput, NotFound
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import JobSpec
from nimbus.security import Principal, Role
from nimbus.services import tracking_search as search
from nimbus.services.tracking import TrackingService
from nimbus.services.tracking_files import directory_listing, parse_artifact_path
from nimbus.services.tracking_registry import TrackingRegistryService
from nimbus.wire import tracking as wire

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def principal(tenant: int = 1, role: Role = Role.MEMBER) -> Principal:
    return Principal(tenant, f"t{tenant}", f"tok_{tenant}{role}", f"{role}-token", role)


ALICE, BOB, VIEWER = principal(1), principal(2), principal(1, Role.VIEWER)


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    with database.session(write=True) as s:
        s.add_all([Tenant(id=1, name="acme"), Tenant(id=2, name="globex")])
    yield database
    database.dispose()


def point(key: str, value: float, step: int) -> wire.LoggedMetric:
    return wire.LoggedMetric(key=key, value=value, step=step, timestamp=1000 + step)


def kv(key: str, value: str) -> wire.KeyValue:
    return wire.KeyValue(key=key, value=value)


def test_runs_params_metrics_and_search(db: Database) -> None:
    tracking = TrackingService(db, clock=lambda: T0)
    exp = tracking.create_experiment(ALICE, wire.CreateExperiment(name="sweep"))
    with pytest.raises(Conflict):
        tracking.create_experiment(ALICE, wire.CreateExperiment(name="sweep"))
    runs = []
    for lr, acc in (("0.1", 0.7), ("0.01", 0.95)):
        run = tracking.create_run(ALICE, wire.CreateRun(experiment_id=exp, run_name=f"lr{lr}"))
        run_id = run["info"]["run_id"]
        metrics = [point("loss", 1.0, 0), point("loss", 0.4, 2), point("loss", 0.5, 1)]
        metrics.append(point("acc", acc, 2))
        tracking.log_batch(ALICE, run_id, metrics, [kv("lr", lr)], [kv("team", "a")])
        runs.append(run_id)
    slow, fast = runs
    tracking.log_batch(ALICE, fast, [], [kv("lr", "0.01")], [kv("team", "b")])  # same value
    with pytest.raises(InvalidInput, match="cannot change"):
        tracking.log_batch(ALICE, fast, [], [kv("lr", "0.5")], [])
    with pytest.raises(InvalidInput, match="finite"):
        tracking.log_batch(ALICE, fast, [point("x", float("nan"), 0)], [], [])

    got = tracking.get_run(ALICE, fast)
    assert got["data"]["tags"][-1] == {"key": "team", "value": "b"}
    # The latest point is the highest step's, not the last logged.
    assert {m["key"]: m["value"] for m in got["data"]["metrics"]} == {"acc": 0.95, "loss": 0.4}
    page = tracking.metric_history(ALICE, fast, "loss", 2, None)
    assert [m["step"] for m in page["metrics"]] == [0, 2] and page["next_page_token"] == "2"
    rest = tracking.metric_history(ALICE, fast, "loss", 2, page["next_page_token"])
    assert [m["step"] for m in rest["metrics"]] == [1] and "next_page_token" not in rest

    def found(text: str, order: list[str] | None = None) -> list[str]:
        body = wire.SearchRuns(experiment_ids=[exp], filter=text, order_by=order or [])
        return [r["info"]["run_id"] for r in tracking.search_runs(ALICE, body)["runs"]]

    assert found("metrics.acc > 0.9") == [fast]
    assert found("params.lr = '0.1' and tags.team = 'a'") == [slow]
    assert found("attributes.run_name LIKE 'lr0.0%'") == [fast]
    assert found("", ["metrics.acc DESC"]) == [fast, slow]
    assert found("", ["metrics.acc ASC"]) == [slow, fast]
    assert found("metrics.missing > 0") == []

    tracking.set_run_stage(ALICE, slow, "deleted")
    assert found("") == [fast]
    deleted = wire.SearchRuns(experiment_ids=[exp], run_view_type="DELETED_ONLY")
    assert [r["info"]["run_id"] for r in tracking.search_runs(ALICE, deleted)["runs"]] == [slow]
    with pytest.raises(InvalidInput, match="deleted"):
        tracking.log_batch(ALICE, slow, [point("x", 1, 0)], [], [])
    done = tracking.update_run(ALICE, wire.UpdateRun(run_id=fast, status="FINISHED", end_time=9))
    assert done["status"] == "FINISHED" and done["end_time"] == 9

    # Tenants and roles.
    with pytest.raises(NotFound):
        tracking.get_run(BOB, fast)
    with pytest.raises(NotFound):
        tracking.log_batch(BOB, fast, [point("x", 1, 0)], [], [])
    assert tracking.search_runs(BOB, wire.SearchRuns(experiment_ids=[exp]))["runs"] == []
    with pytest.raises(Forbidden):
        tracking.log_batch(VIEWER, fast, [point("x", 1, 0)], [], [])
    assert [r.id for r in tracking.list_runs(ALICE, "sweep", 10)] == [fast]
    assert tracking.list_runs(BOB, None, 10) == []


def test_experiment_zero_is_each_tenants_default(db: Database) -> None:
    tracking = TrackingService(db, clock=lambda: T0)
    mine = tracking.create_run(ALICE, wire.CreateRun())["info"]["experiment_id"]
    theirs = tracking.create_run(BOB, wire.CreateRun())["info"]["experiment_id"]
    assert mine != theirs
    assert tracking.get_experiment(ALICE, "0")["name"] == "Default"
    with pytest.raises(NotFound):
        tracking.get_experiment(BOB, mine)


def test_a_job_reads_as_a_run(db: Database) -> None:
    """A Nimbus job's nr.log metrics (rows of job_metrics) through the MLflow API."""
    with db.session(write=True) as s:
        job = job_repo.submit(s, 1, JobSpec(model="mlp", dataset="iris", params={"lr": 0.1}), T0)
    with db.session(write=True) as s:
        [claim] = job_repo.claim_next(
            s,
            capacity=Capacity(cpus=64, gpus=8, memory_bytes=1 << 40),
            owner="node",
            now=T0,
            lease_seconds=30,
        )
        job_outputs.add_metrics(s, claim.attempt.id, [(0, "loss", 0.9), (1, "loss", 0.4)], T0)
    tracking = TrackingService(db)
    run = tracking.get_run(ALICE, job.id)
    assert run["info"]["status"] == "RUNNING" and run["info"]["experiment_id"] == "jobs"
    assert run["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    assert run["data"]["metrics"][0]["value"] == 0.4
    history = tracking.metric_history(ALICE, job.id, "loss", None, None)["metrics"]
    assert [(m["step"], m["value"]) for m in history] == [(0, 0.9), (1, 0.4)]
    with pytest.raises(InvalidInput, match="read-only"):
        tracking.log_batch(ALICE, job.id, [point("x", 1, 0)], [], [])
    with pytest.raises(NotFound):
        tracking.get_run(BOB, job.id)
    jobs_search = wire.SearchRuns(experiment_ids=["jobs"], filter="metrics.loss < 0.5")
    assert [r["info"]["run_id"] for r in tracking.search_runs(ALICE, jobs_search)["runs"]] == [
        job.id
    ]
    assert tracking.search_runs(BOB, jobs_search)["runs"] == []
    assert tracking.get_experiment(ALICE, "jobs")["name"] == "Nimbus jobs"
    [compared] = tracking.tracked_runs(ALICE, [job.id])
    assert compared.experiment == "jobs" and compared.metrics == {"loss": 0.4}


def test_registry_versions_and_aliases(db: Database) -> None:
    registry = TrackingRegistryService(db, clock=lambda: T0)
    registry.create_model(ALICE, wire.CreateRegisteredModel(name="clf"))
    with pytest.raises(Conflict):
        registry.create_model(ALICE, wire.CreateRegisteredModel(name="clf"))
    for source in ("s3://a", "s3://b"):
        new = wire.CreateModelVersion(name="clf", source=source)
        assert registry.create_version(ALICE, new)["status"] == "READY"
    assert registry.get_model(ALICE, "clf")["latest_versions"][0]["version"] == "2"
    registry.set_alias(ALICE, wire.RegisteredModelAlias(name="clf", alias="prod", version="1"))
    assert registry.by_alias(ALICE, "clf", "prod")["source"] == "s3://a"
    assert registry.get_version(ALICE, "clf", "1")["aliases"] == ["prod"]
    with pytest.raises(InvalidInput, match="reserved"):
        registry.set_alias(ALICE, wire.RegisteredModelAlias(name="clf", alias="v3", version="1"))
    with pytest.raises(NotFound):
        registry.set_alias(ALICE, wire.RegisteredModelAlias(name="clf", alias="x", version="9"))
    registry.delete_alias(ALICE, "clf", "prod")
    with pytest.raises(NotFound):
        registry.by_alias(ALICE, "clf", "prod")
    with pytest.raises(NotFound):
        registry.get_model(BOB, "clf")
    assert registry.search_models(BOB, None, 10, None)["registered_models"] == []
    assert len(registry.search_versions(ALICE, "name = 'clf'", 10, None)["model_versions"]) == 2


def test_migration_0019_goes_down_and_up(db: Database) -> None:
    TrackingService(db).create_run(ALICE, wire.CreateRun())
    command.downgrade(alembic_config(db.engine), "0018")
    assert not [t for t in inspect(db.engine).get_table_names() if t.startswith("tracking_")]
    upgrade(db.engine)
    assert "tracking_metrics" in inspect(db.engine).get_table_names()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics.acc >", "cannot read"),
        ("metrics.acc LIKE 'x'", "number"),
        ("params.lr > '1'", "string"),
        ("params.lr = 1", "quote"),
        ("attributes.colour = 'red'", "unknown attribute"),
    ],
)
def test_search_filters_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        search.parse_filter(text)


def test_search_filter_syntax() -> None:
    item = search.Searchable(
        {"status": "FINISHED", "run_name": "It's"},
        metrics={"acc": 0.9},
        params={"lr": "0.01"},
        tags={"team": "Vision"},
    )
    for text, expected in [
        ("metrics.acc >= 0.9 AND params.lr = '0.01'", True),
        ("metrics.acc < 0.9", False),
        ("tags.team ILIKE 'vis%'", True),
        ("tags.team LIKE 'vis%'", False),
        ("tags.`team` != 'Vision'", False),
        ("status = 'FINISHED' and run_name = 'It''s'", True),
        ("params.lr = 'a and b'", False),
    ]:
        assert search.matches(item, search.parse_filter(text)) is expected, text
    assert search.page(list(range(5)), 2, "4") == ([4], "")
    with pytest.raises(InvalidInput, match="page_token"):
        search.page([], 2, "x")


def test_artifact_paths_and_listing() -> None:
    where = parse_artifact_path("3/abc/artifacts/model/MLmodel")
    assert (where.experiment_id, where.run_id, where.file) == (3, "abc", "model/MLmodel")
    assert parse_artifact_path("3/abc/artifacts").file == ""
    for bad in ("3/abc/model", "x/abc/artifacts/f", "3/abc/artifacts/../f", "3/abc/artifacts//f"):
        with pytest.raises(InvalidInput):
            parse_artifact_path(bad)
    files = {"notes.txt": 5, "model/MLmodel": 12, "model/data/w.bin": 40}
    assert directory_listing(files, "") == [
        {"path": "model", "is_dir": True},
        {"path": "notes.txt", "is_dir": False, "file_size": 5},
    ]
    assert directory_listing(files, "model") == [
        {"path": "MLmodel", "is_dir": False, "file_size": 12},
        {"path": "data", "is_dir": True},
    ]
    assert directory_listing(files, "notes.txt") == []
