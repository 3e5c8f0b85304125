"""Job, code and job API services over a real metadata store, and the scheduler's wiring in
the server process (instance id, own URL, executor, lock)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nimbus.config import Settings
from nimbus.datasets.domain import IngestOptions
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.errors import Forbidden, InvalidInput, NotFound, Unavailable
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Fenced
from nimbus.jobs.executors.base import AttemptLaunch, Program
from nimbus.jobs.gpus import machine_gpus
from nimbus.jobs.policy import Outcome
from nimbus.security import Principal, Role
from nimbus.server import NodeExecutor, SchedulerThread, instance_id, own_url
from nimbus.services.code import CodeService, check_archive
from nimbus.services.datasets import DatasetService
from nimbus.services.job_api import JobApiService
from nimbus.services.jobs import JobService, finite, node_capacity
from nimbus.storage.blobs import BlobStore
from nimbus.wire.jobs import JobDataset, SubmitRequest
from tests.services.conftest import fake_ingest

NODE = Capacity(cpus=4, gpus=0, memory_bytes=8 << 30)


@dataclass
class Services:
    datasets: DatasetService
    code: CodeService
    jobs: JobService
    job_api: JobApiService
    db: Database
    member: Principal


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    """Both metadata store backends (overrides the SQLite-only fixture of conftest)."""
    database = Database(migrated_url)
    yield database
    database.dispose()


@pytest.fixture
def services(
    db: Database, blobs: BlobStore, tmp_path: Path, make_principal: Callable[..., Principal]
) -> Services:
    datasets = DatasetService(db, blobs, tmp_dir=tmp_path / "tmp", ingest_fn=fake_ingest)
    code = CodeService(db, blobs, max_unpacked_bytes=1 << 20)
    member = make_principal("acme")
    source = tmp_path / "reviews.csv"
    source.write_bytes(b"text,label\nok,pos\n")
    datasets.upload(member, "reviews", source, "a" * 64, "reviews.csv", IngestOptions())
    return Services(
        datasets,
        code,
        JobService(db, datasets, code, NODE),
        JobApiService(db, blobs, lease_seconds=30),
        db,
        member,
    )


def request(**body: Any) -> SubmitRequest:
    return SubmitRequest.model_validate({"dataset": "reviews", "model": "text", **body})


def test_submit_snapshots_its_inputs_for_the_job_process(services: Services) -> None:
    job = services.jobs.submit(services.member, request(params={"epochs": "3"}, seed=4))
    assert job.params["epochs"] == 3 and job.params["seed"] == 4 and job.seed == 4
    services.datasets.delete_dataset(services.member, "reviews")  # the job keeps its snapshot
    with services.db.session(write=True) as s:
        (claim,) = repo.claim_next(
            s, capacity=NODE, owner="n", now=datetime.now(UTC), lease_seconds=30
        )
    ctx = services.job_api.authenticate(claim.token, claim.attempt.id)
    spec = services.job_api.spec(ctx)
    assert spec.dataset is not None
    assert spec.dataset["dataset"] == "reviews" and spec.params["epochs"] == 3
    assert services.jobs.get(services.member, job.id).dataset == JobDataset(
        name="reviews", version=1, content_hash=spec.dataset["content_hash"]
    )
    # Known limitation: a job holds no reference on its dataset's blobs, so deleting the
    # dataset under a queued job leaves it a spec whose files are gone.
    with pytest.raises(NotFound):
        services.job_api.blob(ctx, spec.dataset["files"]["train_x.npy"]["key"])


def test_seed_rules(services: Services) -> None:
    for body, seed in (
        ({}, 0),
        ({"seed": 9}, 9),
        ({"params": {"seed": "5"}}, 5),
        ({"seed": 5, "params": {"seed": 5}}, 5),
    ):
        assert services.jobs.submit(services.member, request(**body)).seed == seed, body
    with pytest.raises(InvalidInput, match="disagree"):
        services.jobs.submit(services.member, request(seed=1, params={"seed": 2}))


def test_private_training_is_refused_on_several_workers(services: Services) -> None:
    private = {"params": {"dp_epsilon": "8"}}
    assert services.jobs.submit(services.member, request(**private)).params["dp_epsilon"] == 8
    with pytest.raises(InvalidInput, match="workers must be 1, not 2"):
        services.jobs.submit(services.member, request(workers=2, **private))


def test_code_jobs_keep_their_params_as_given(services: Services, tmp_path: Path) -> None:
    script = tmp_path / "upload"
    script.write_bytes(b"print(1)\n")
    code = services.code.upload(
        services.member, script, hashlib.sha256(b"print(1)\n").hexdigest(), "t.py"
    )
    assert not script.exists()
    job = services.jobs.submit(
        services.member, request(model=code.ref, params={"depth": "3", "seed": "2"})
    )
    assert job.params == {"depth": "3", "seed": 2} and job.seed == 2
    for params in ({"bad key": 1}, {"nested": {"a": 1}}):
        with pytest.raises(InvalidInput):
            services.jobs.submit(services.member, request(model=code.ref, params=params))


def test_viewers_cannot_submit_or_cancel(
    services: Services, make_principal: Callable[..., Principal]
) -> None:
    viewer = make_principal("acme", Role.VIEWER)
    job = services.jobs.submit(services.member, request())
    with pytest.raises(Forbidden):
        services.jobs.submit(viewer, request())
    with pytest.raises(Forbidden):
        services.jobs.cancel(viewer, job.id)
    assert services.jobs.get(viewer, job.id).id == job.id


def test_checkpoints_are_pruned_to_the_latest_two(services: Services, tmp_path: Path) -> None:
    services.jobs.submit(services.member, request())
    with services.db.session(write=True) as s:
        (claim,) = repo.claim_next(
            s, capacity=NODE, owner="n", now=datetime.now(UTC), lease_seconds=30
        )
    ctx = services.job_api.authenticate(claim.token, claim.attempt.id)
    keys = []
    for step in range(1, 5):
        path = tmp_path / f"ckpt{step}"
        data = f"checkpoint {step}".encode()
        path.write_bytes(data)
        keys.append(
            services.job_api.put_checkpoint(
                ctx, step, None, path, hashlib.sha256(data).hexdigest(), len(data)
            ).key
        )
    assert [services.job_api.blobs.exists(k) for k in keys] == [False, False, True, True]
    step, download = services.job_api.latest_checkpoint(ctx)
    assert step == 4 and b"".join(download.chunks) == b"checkpoint 4"
    # The runtime reads it as a blob through its node's cache, which the node may fill
    # from the bucket ahead of a retried attempt; older checkpoints are no inputs.
    ref = services.job_api.latest_checkpoint_ref(ctx)
    assert (ref.step, ref.key, ref.size) == (4, keys[3], len(b"checkpoint 4"))
    assert b"".join(services.job_api.blob(ctx, keys[3]).chunks) == b"checkpoint 4"
    with pytest.raises(NotFound):
        services.job_api.blob(ctx, keys[2])
    ahead = services.job_api.prefetch_blobs(claim.job.id)
    assert ahead[keys[3]] == len(b"checkpoint 4") and keys[2] not in ahead
    with services.db.session(write=True) as s:
        repo.request_cancel(s, claim.job.id, datetime.now(UTC))
        repo.finish_attempt(s, claim.attempt.id, Outcome.from_exit(None, 9), datetime.now(UTC))
    with pytest.raises(Fenced):
        services.job_api.authenticate(claim.token, claim.attempt.id)


def test_finite_and_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert finite({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"}) == {
        "a": [1.0, None],
        "b": None,
        "c": "x",
    }
    gpus = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / bus).mkdir(parents=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert len(machine_gpus(gpus)) == 2 and len(machine_gpus(tmp_path / "none")) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert len(machine_gpus(gpus)) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert len(machine_gpus(gpus)) == 0
    assert node_capacity(2, 1, "3G") == Capacity(2.0, 1, 3 << 30)


def _tar(files: dict[str, bytes], *, gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue()) if gz else buffer.getvalue()


def test_code_archives(tmp_path: Path) -> None:
    path = tmp_path / "code"
    path.write_bytes(_tar({"main.py": b"pass\n", "lib/util.py": b"x = 1\n"}, gz=True))
    check_archive(path, "code.tar.gz", 1 << 20)
    with pytest.raises(InvalidInput, match="limit"):
        check_archive(path, "code.tar.gz", 10)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.py", "pass\n")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(InvalidInput, match="not a tar"):
        check_archive(path, "code.tar", 1 << 20)


# --- the scheduler in the server process ---------------------------------------------------


def test_own_url_and_instance_id(tmp_path: Path) -> None:
    assert own_url("0.0.0.0", 8600) == "http://127.0.0.1:8600"
    assert own_url("::", 1) == "http://[::1]:1"
    assert own_url("10.0.0.5", 2) == "http://10.0.0.5:2"
    assert own_url("fe80::1", 3) == "http://[fe80::1]:3"
    settings = Settings(home=tmp_path)
    first = instance_id(settings)
    assert first and instance_id(settings) == first
    assert (tmp_path / "instance-id").read_text().strip() == first
    assert instance_id(Settings(home=tmp_path, instance_id="node-7")) == "node-7"


@dataclass
class FakeExecutor:
    launches: list[AttemptLaunch] = field(default_factory=list)

    def start(self, launch: AttemptLaunch) -> Any:
        self.launches.append(launch)
        return launch

    def poll(self, handle: Any) -> None:
        return None

    def kill(self, handle: Any) -> None:
        pass

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        return []

    def close(self) -> None:
        pass


def test_node_executor_adds_the_cache_dir_and_falls_back(tmp_path: Path) -> None:
    fake = FakeExecutor()
    node = NodeExecutor(lambda: fake, tmp_path, {"NIMBUS_CACHE_DIR": "/cache"})
    launch = AttemptLaunch(
        job_id="j",
        attempt_id="a",
        attempt_number=1,
        token="t",
        program=Program(code="pass"),
        workdir=tmp_path / "a",
        nimbus_url="http://x",
        extra_env={"OTHER": "1"},
    )
    node.start(launch)
    assert fake.launches[0].extra_env == {"NIMBUS_CACHE_DIR": "/cache", "OTHER": "1"}

    def broken() -> Any:
        raise Unavailable("no fork server")

    fallback = NodeExecutor(broken, tmp_path, {})
    assert type(fallback.warm()).__name__ == "LocalExecutor"
    assert NodeExecutor(broken, tmp_path, {}).reap_orphans(lambda _: True) == []


def test_one_scheduler_per_instance(tmp_path: Path) -> None:
    def thread() -> SchedulerThread:
        me = type("Me", (), {"id": "node-1"})()
        election: Any = type(
            "E",
            (),
            {
                "cluster": type("C", (), {"me": me})(),
                "start": lambda *a: None,
                "stop": lambda *a: None,
            },
        )()
        return SchedulerThread(
            election, NodeExecutor(FakeExecutor, tmp_path, {}), tmp_path / "scheduler-node-1.lock"
        )

    first, second = thread(), thread()
    first.start()  # the election does nothing: the lock is what is tested
    try:
        with pytest.raises(Unavailable, match="NIMBUS_INSTANCE_ID"):
            second.start()
    finally:
        first.stop()
    second.start()
    second.stop()
