"""Two control planes on one PostgreSQL and one object store: both serve the whole API, one
schedules; kill -9 the leader and the other takes over within 10 s, and every job queued or
running at the kill finishes exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.tables import DeploymentRow
from nimbus.jobs.domain import AttemptState
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store
from nimbus.wire.cluster import ClusterStatus
from tests.api.test_deployments import deploy, infer, ready
from tests.api.test_deployments import wait_for as wait_for_deployment
from tests.cli.conftest import Nimbus
from tests.e2e.conftest import FAST, job_processes, upload_digits, wait_for
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY, add_job, image_model_dir, images

JOBS = 3  # two run on the leader (two CPUs), one waits in the queue
PARAMS = {"epochs": "5", "batch_size": "16"}
TAKEOVER_SECONDS = 10.0


def status(url: str, token: str) -> ClusterStatus:
    answer = httpx.get(
        f"{url}/api/v1/cluster", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return ClusterStatus.model_validate(answer.json())


def leader_of(server: ServerProcess, token: str) -> str | None:
    try:
        return status(server.url, token).leader
    except httpx.HTTPError:
        return None


@pytest.mark.slow
def test_the_other_control_plane_takes_over_and_every_job_ends_once(
    pg_url: str, tmp_path: Path
) -> None:
    shared = {
        **FAST,
        "NIMBUS_DATABASE_URL": pg_url,
        "NIMBUS_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "NIMBUS_EXECUTOR": "local",
    }
    first = ServerProcess(tmp_path / "a", env={**shared, "NIMBUS_INSTANCE_ID": "cp-a"}).start()
    token = first.admin_token  # the metadata store's: the second server creates none
    second = ServerProcess(tmp_path / "b", env={**shared, "NIMBUS_INSTANCE_ID": "cp-b"}).start()
    db = Database(pg_url)
    try:
        seen = status(second.url, token)
        assert seen.leader == "cp-a" and seen.executor == "local"
        assert [(p.id, p.leader, p.alive) for p in seen.control_planes] == [
            ("cp-a", True, True),
            ("cp-b", False, True),
        ]
        assert {p.url for p in seen.control_planes} == {first.url, second.url}

        with (
            Client(first.url, token, settings=Settings(home=first.home)) as on_a,
            Client(second.url, token, settings=Settings(home=second.home)) as on_b,
        ):
            member = on_b.create_token("m", role="member").token
            refused = httpx.get(
                f"{first.url}/api/v1/cluster", headers={"Authorization": f"Bearer {member}"}
            )
            assert refused.status_code == 403, refused.text

            # The whole API on both: upload through one, submit through the other.
            dataset = upload_digits(on_a, tmp_path)
            ids = [on_b.submit_job(dataset, "cnn", params=PARAMS, seed=i).id for i in range(JOBS)]

            def checkpoint(job_id: str) -> int | None:
                with db.session() as s:
                    found = job_outputs.latest_checkpoint(s, job_id)
                return found.step if found else None

            def running_with_checkpoint() -> bool:
                states = [on_a.get_job(job_id).state for job_id in ids]
                running = [i for i, s in zip(ids, states, strict=True) if s == "running"]
                return len(running) == 2 and "queued" in states and any(map(checkpoint, running))

            wait_for(
                "two running jobs, one checkpointed, and a queue", running_with_checkpoint, 180
            )
            was_running = {job_id for job_id in ids if on_b.get_job(job_id).state == "running"}
            busy = status(second.url, token)
            (node,) = busy.nodes
            assert node.control_plane == "cp-a" and node.resources.cpus == 2
            assert {a.job_id for a in node.running} == was_running
            assert [(q.tenant, q.queued, q.running) for q in busy.queue] == [("default", 1, 2)]

            first.kill()  # SIGKILL of the leader's process group
            killed_at = time.monotonic()
            wait_for(
                "the second control plane to lead",
                lambda: leader_of(second, token) == "cp-b",
                TAKEOVER_SECONDS + 5,
            )
            took = time.monotonic() - killed_at
            print(f"the second control plane led {took:.1f}s after the kill")
            assert took <= TAKEOVER_SECONDS, f"took over after {took:.1f}s"

            jobs = [on_b.wait_job(job_id, timeout=300) for job_id in ids]

        for job in jobs:
            assert job.state == "succeeded", job
            assert job.evaluation and job.evaluation["accuracy"] > 0.5, job
            with db.session() as s:
                attempts = repo.list_attempts(s, job.id)
                result = repo.get(s, job.id)
            succeeded = [a for a in attempts if a.state is AttemptState.SUCCEEDED]
            assert len(succeeded) == 1, attempts  # exactly once
            assert attempts[-1] == succeeded[0]
            assert result is not None and result.result is not None
            if job.id in was_running:
                assert len(attempts) >= 2, attempts  # the kill cost an attempt, not the job
                assert attempts[0].lease_owner == "cp-a"
                assert attempts[-1].lease_owner == "cp-b"
            assert job_processes(first.home, job.id) == []  # the dead one's were reaped

        after = status(second.url, token)
        assert after.leader == "cp-b" and after.epoch == seen.epoch + 1
        assert [p.id for p in after.control_planes] == ["cp-b"]  # cp-a's was taken over
        assert after.queue == []

        cli = Nimbus(
            {
                "NIMBUS_HOME": str(tmp_path / "cli"),
                "NIMBUS_URL": second.url,
                "NIMBUS_TOKEN": token,
                "COLUMNS": "200",
            }
        )
        out = cli("cluster", "status").stdout
        print(out)
        assert "cp-b" in out and second.url in out and "Queue" in out
        assert cli.json("cluster", "status")["leader"] == "cp-b"
    finally:
        db.dispose()
        first.kill()
        second.stop()


@pytest.mark.slow
def test_a_live_control_plane_takes_over_the_deployments_of_a_dead_one(
    pg_url: str, tmp_path: Path
) -> None:
    blobs_url = f"file://{tmp_path / 'blobs'}"
    shared = {
        **API_ONLY,
        "NIMBUS_DATABASE_URL": pg_url,
        "NIMBUS_STORAGE_URL": blobs_url,
        "NIMBUS_LEADER_LEASE_SECONDS": "2",
    }
    first = ServerProcess(tmp_path / "a", env={**shared, "NIMBUS_INSTANCE_ID": "cp-a"}).start()
    token = first.admin_token
    second = ServerProcess(tmp_path / "b", env={**shared, "NIMBUS_INSTANCE_ID": "cp-b"}).start()
    db = Database(pg_url)
    blobs = BlobStore(open_object_store(blobs_url), tmp_path / "staging")
    pids: list[int] = []
    try:
        job = add_job(db, blobs, "default", image_model_dir(tmp_path / "model", 1))
        with first.client(token) as on_a:
            answer = on_a.post("/api/v1/models/cnn/versions", json={"job": job})
            assert answer.status_code == 201, answer.text
            deploy(on_a, "web")
            shown = wait_for_deployment(on_a, "web", ready(1))
        endpoint = str(shown["endpoint"])
        pids = [r["pid"] for r in shown["replicas"]]
        with second.client(token) as on_b:  # served by both; supervised by the first
            assert on_b.get("/api/v1/deployments/web").json()["endpoint"] == endpoint

            first.kill()
            again = wait_for_deployment(
                on_b,
                "web",
                lambda d: ready(1)(d) and not {r["pid"] for r in d["replicas"]} & set(pids),
                timeout=90,
            )
        assert again["endpoint"] == endpoint  # the same address, now the second's
        assert infer(endpoint, "web", token, images(2)).status_code == 200
        with db.session() as s:
            owner = s.scalars(select(DeploymentRow.owner)).one()
        assert owner == "cp-b"
    finally:
        db.dispose()
        first.kill()
        with second.client(token) as on_b:
            on_b.delete("/api/v1/deployments/web")
        second.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
