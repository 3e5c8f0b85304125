"""Direct transfers against a real control plane on SeaweedFS: parts go straight into the
bucket, the server checks them from the bucket before it records anything, tenants cannot
reach each other's uploads, presigned URLs open one part and nothing else, and an upload
killed mid-way (SIGKILL) resumes from the parts already there."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.errors import CorruptBlob, InvalidInput
from tests.api.conftest import error_of, make_token
from tests.helpers import ServerProcess
from tests.helpers_s3 import SeaweedFS, aws_env, s3_client

API = "/api/v1"
MIB = 1024 * 1024
PREFIX = "direct"


def dataset_tar(path: Path, padding: int, seed: int = 0) -> Path:
    """A valid image dataset (100 random 28x28 IDX images) with ``padding`` bytes of a
    member the reader skips: a file of any size that ingests in a moment."""
    rng = np.random.default_rng(seed)
    n = 100
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    members = {
        "README.bin": rng.bytes(padding),
        "train-images-idx3-ubyte": np.array([0x803, n, 28, 28], ">u4").tobytes() + images.tobytes(),
        "train-labels-idx1-ubyte": np.array([0x801, n], ">u4").tobytes() + labels.tobytes(),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.ensure_bucket("nimbus-direct")


def direct_server(seaweedfs: SeaweedFS, bucket: str, prefix: str, home: Path) -> ServerProcess:
    """A control plane on ``bucket``/``prefix`` of SeaweedFS (a context manager)."""
    env = {
        **aws_env(seaweedfs.endpoint),
        "NIMBUS_STORAGE_URL": f"s3://{bucket}/{prefix}",
        "NIMBUS_SCHEDULER_ENABLED": "false",
        "NIMBUS_PRESIGN_SECONDS": "60",
    }
    return ServerProcess(home, env=env)


@pytest.fixture(scope="module")
def server(
    seaweedfs: SeaweedFS, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("direct") / "home"
    with direct_server(seaweedfs, bucket, PREFIX, home) as server:
        yield server


def keys(seaweedfs: SeaweedFS, bucket: str, prefix: str) -> list[str]:
    s3 = s3_client(seaweedfs.endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def sdk(server: ServerProcess, token: str, home: Path, **settings: Any) -> Client:
    options = {"direct_min_bytes": 1, **settings}
    return Client(server.url, token, settings=Settings(home=home, **options))


def test_a_big_upload_goes_straight_to_the_bucket_and_comes_back_verified(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "digits.tar", 20 * MIB)
    token = make_token(server, "member", "acme")
    with sdk(server, token, tmp_path / "client") as api:
        version = api.upload_dataset("digits", source)
        assert version.files["source"].key == f"sha256/{sha256_of(source)[:2]}/{sha256_of(source)}"
        stored = keys(seaweedfs, bucket, f"{PREFIX}/")
        assert f"{PREFIX}/{version.files['source'].key}" in stored
        assert not [k for k in stored if k.startswith(f"{PREFIX}/uploads/")]  # staged bytes gone
        # The same file again: the identical version, and still nothing left staged.
        again = api.upload_dataset("digits", source)
        assert again.version == version.version
        assert not [k for k in keys(seaweedfs, bucket, f"{PREFIX}/uploads/")]

        paths = api.download_dataset("digits", tmp_path / "out")
        assert (tmp_path / "out" / "digits.tar").read_bytes() == source.read_bytes()
        assert {p.name for p in paths} >= {"digits.tar", "version.json"}

        # A byte flipped in the bucket, with the cloud's own client: refused, no file.
        s3 = s3_client(seaweedfs.endpoint)
        full = f"{PREFIX}/{version.files['source'].key}"
        data = bytearray(s3.get_object(Bucket=bucket, Key=full)["Body"].read())
        data[1234] ^= 0xFF
        s3.put_object(Bucket=bucket, Key=full, Body=bytes(data))
        with pytest.raises(CorruptBlob):
            api.download_dataset("digits", tmp_path / "bad")
        assert not (tmp_path / "bad" / "digits.tar").exists()
        assert not list((tmp_path / "bad").glob(".*.part"))


def test_the_link_is_a_presigned_get_of_that_one_object(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "small.tar", 1 * MIB, seed=1)
    token = make_token(server, "member", "links")
    with sdk(server, token, tmp_path / "client") as api:
        version = api.upload_dataset("small", source)
    with server.client(token) as http:
        link = http.get(f"{API}/datasets/small/versions/{version.version}/files/source/link").json()
    assert link["sha256"] == sha256_of(source) and link["size"] == source.stat().st_size
    assert "X-Amz-Signature=" in link["url"] and "X-Amz-Expires=60" in link["url"]
    assert httpx.get(link["url"]).content == source.read_bytes()
    # The signature covers the key: the same URL pointed at another object is refused.
    other = link["url"].replace(version.files["source"].key, "sha256/00/" + "0" * 64)
    assert httpx.get(other).status_code == 403
    assert httpx.put(link["url"], content=b"x").status_code == 403  # a GET only


def start(http: httpx.Client, name: str, size: int) -> dict[str, Any]:
    response = http.post(f"{API}/datasets/{name}/uploads", json={"filename": "f.tar", "size": size})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_tampered_part_is_refused_and_nothing_is_recorded(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "t.tar", 9 * MIB, seed=2)
    data = source.read_bytes()
    claimed = hashlib.sha256(data).hexdigest()
    token = make_token(server, "member", "tamper")
    with server.client(token) as http:
        session = start(http, "tampered", len(data))
        assert session["parts"] == 2 and session["part_size"] == 8 * MIB
        urls = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": [1, 2]}).json()
        forged = bytearray(data)
        forged[100] ^= 0x01  # different bytes than the hash the client will claim
        for number, url in urls["urls"].items():
            lo = (int(number) - 1) * session["part_size"]
            part = bytes(forged[lo : lo + session["part_size"]])
            assert httpx.put(url, content=part).status_code == 200
        response = http.post(f"{API}/uploads/{session['id']}/complete", json={"sha256": claimed})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["code"] == "upload_mismatch" and claimed in error["message"]
        assert http.get(f"{API}/datasets/tampered").status_code == 404  # no version, no dataset
        assert http.get(f"{API}/uploads/{session['id']}").status_code == 404  # dropped
    forged_sha = hashlib.sha256(forged).hexdigest()
    stored = keys(seaweedfs, bucket, f"{PREFIX}/")
    assert not [k for k in stored if claimed in k or forged_sha in k or session["id"] in k]


def test_completing_with_parts_missing_names_them(server: ServerProcess) -> None:
    token = make_token(server, "member", "partial")
    with server.client(token) as http:
        session = start(http, "partial", 20 * MIB)
        url = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": [2]}).json()
        assert httpx.put(url["urls"]["2"], content=b"\0" * (8 * MIB)).status_code == 200
        response = http.post(f"{API}/uploads/{session['id']}/complete", json={"sha256": "a" * 64})
        assert response.status_code == 400
        assert "2 of 3 parts missing (1, 3)" in error_of(response)["message"]
        shown = http.get(f"{API}/uploads/{session['id']}").json()
        assert [p["number"] for p in shown["uploaded"]] == [2]
        bad = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": [0, 4]})
        assert bad.status_code == 400 and "1-3" in error_of(bad)["message"]
        assert http.delete(f"{API}/uploads/{session['id']}").status_code == 204
        assert http.get(f"{API}/uploads/{session['id']}").status_code == 404


def test_another_tenant_cannot_see_sign_complete_or_abort_an_upload(
    server: ServerProcess, tmp_path: Path
) -> None:
    owner = make_token(server, "member", "tenant-a")
    intruder = make_token(server, "member", "tenant-b")
    viewer = make_token(server, "viewer", "tenant-a")
    source = dataset_tar(tmp_path / "a.tar", 1 * MIB, seed=3)
    with server.client(owner) as http_a, server.client(intruder) as http_b:
        session = start(http_a, "secret", source.stat().st_size)
        sid = session["id"]
        attacks = [
            http_b.get(f"{API}/uploads/{sid}"),
            http_b.post(f"{API}/uploads/{sid}/parts", json={"numbers": [1]}),
            http_b.post(f"{API}/uploads/{sid}/complete", json={"sha256": sha256_of(source)}),
            http_b.delete(f"{API}/uploads/{sid}"),
            http_b.get(f"{API}/uploads/../uploads/{sid}"),
            http_b.get(f"{API}/uploads/{'0' * 32}"),
        ]
        for response in attacks:
            assert response.status_code == 404, response.text
        with server.client(viewer) as http_v:
            assert http_v.post(f"{API}/uploads/{sid}/parts", json={"numbers": [1]}).status_code in (
                403,
                404,
            )
            create = http_v.post(f"{API}/datasets/x/uploads", json={"filename": "f", "size": 1})
            assert create.status_code == 403
        # The owner's upload is untouched by all that and completes.
        urls = http_a.post(f"{API}/uploads/{sid}/parts", json={"numbers": [1]}).json()["urls"]
        # A part URL opens that one part: not another part number, not a GET of the key.
        forged = urls["1"].replace("partNumber=1", "partNumber=2")
        assert httpx.put(forged, content=b"x").status_code == 403
        assert httpx.get(urls["1"]).status_code == 403
        assert httpx.put(urls["1"], content=source.read_bytes()).status_code == 200
        done = http_a.post(f"{API}/uploads/{sid}/complete", json={"sha256": sha256_of(source)})
        assert done.status_code == 201, done.text
        assert http_b.get(f"{API}/datasets/secret").status_code == 404


def test_bad_requests_get_clear_4xx(server: ServerProcess) -> None:
    token = make_token(server, "member", "bad")
    with server.client(token) as http:
        cases = [
            ({"filename": "f", "size": 0}, "size"),
            ({"filename": "a/b", "size": 10}, "filename"),
            ({"filename": "f", "size": 10, "image_fit": "stretch"}, "fit"),
            ({"filename": "f", "size": 10, "extra": 1}, "extra"),
            ({"filename": "f", "size": 10**13}, "limit"),
        ]
        for body, word in cases:
            response = http.post(f"{API}/datasets/bad/uploads", json=body)
            assert 400 <= response.status_code < 500, response.text
            assert word in error_of(response)["message"], (body, response.text)
        session = start(http, "bad", 10)
        response = http.post(f"{API}/uploads/{session['id']}/complete", json={"sha256": "xyz"})
        assert response.status_code == 400
        assert http.delete(f"{API}/uploads/{session['id']}").status_code == 204


def test_an_upload_killed_mid_way_resumes_from_the_parts_in_the_bucket(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "big.tar", 160 * MIB, seed=4)
    token = make_token(server, "member", "resume")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIMBUS_", "AWS_"))}
    env.update(
        NIMBUS_HOME=str(tmp_path / "cli-home"),
        NIMBUS_URL=server.url,
        NIMBUS_TOKEN=token,
        NIMBUS_DIRECT_MIN_BYTES="1",
        NIMBUS_UPLOAD_WORKERS="1",
    )
    nimbus = str(Path(sys.executable).parent / "nimbus")
    command = [nimbus, "datasets", "upload", "big", str(source)]
    s3 = s3_client(seaweedfs.endpoint)

    def parts_in_bucket() -> int:
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/")
        total = 0
        for upload in uploads.get("Uploads", []):
            listed = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            total += len(listed.get("Parts", []))
        return total

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while parts_in_bucket() < 2:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no part arrived"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    with server.client(token) as http:
        assert http.get(f"{API}/datasets/big").status_code == 404  # nothing recorded yet
    kept = parts_in_bucket()
    assert 2 <= kept <= 20

    second = subprocess.run(
        [*command, "--json"], env=env, capture_output=True, text=True, timeout=240
    )
    assert second.returncode == 0, second.stderr
    assert "resuming upload" in second.stderr and "parts already in the bucket" in second.stderr
    resumed = int(second.stderr.split(": ", 1)[1].split(" of ", 1)[0])
    assert resumed >= 2
    version = json.loads(second.stdout)
    assert version["source_hash"] == sha256_of(source)
    assert not keys(seaweedfs, bucket, f"{PREFIX}/uploads/")
    with sdk(server, token, tmp_path / "client") as api:
        api.download_dataset("big", tmp_path / "out")
    assert sha256_of(tmp_path / "out" / "big.tar") == sha256_of(source)


def test_bytes_that_are_no_dataset_are_refused_and_leave_nothing_staged(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(2 * MIB))
    token = make_token(server, "member", "junk")
    staged_before = keys(seaweedfs, bucket, f"{PREFIX}/uploads/")
    with sdk(server, token, tmp_path / "client") as api, pytest.raises(InvalidInput) as refused:
        api.upload_dataset("junk", junk)
    assert refused.value.code == "invalid_dataset"
    assert not list((tmp_path / "client" / "uploads").glob("*.json"))  # a rerun starts afresh
    digest = sha256_of(junk)
    assert not [k for k in keys(seaweedfs, bucket, f"{PREFIX}/") if digest in k]
    assert keys(seaweedfs, bucket, f"{PREFIX}/uploads/") == staged_before  # session gone
    with server.client(token) as http:
        assert http.get(f"{API}/datasets/junk").status_code == 404


def test_an_abandoned_upload_is_aborted_by_the_sweep_after_the_grace(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """A client that began a direct upload and never came back: the session stays
    resumable through the grace period, then a sweep aborts it and empties its prefix."""
    source = dataset_tar(tmp_path / "gone.tar", 1 * MIB, seed=9)
    token = make_token(server, "member", "leaver")
    with server.client(token) as http:
        session = start(http, "gone", source.stat().st_size)
        sid = session["id"]
        urls = http.post(f"{API}/uploads/{sid}/parts", json={"numbers": [1]}).json()["urls"]
        assert httpx.put(urls["1"], content=source.read_bytes()).status_code == 200
        staged = [k for k in keys(seaweedfs, bucket, f"{PREFIX}/uploads/") if sid in k]
        assert staged  # the session's record
        with server.client() as operator:
            kept = operator.post(f"{API}/storage/sweep").json()  # the default grace: hours
            assert kept["uploads_aborted"] == 0, kept
            assert http.get(f"{API}/uploads/{sid}").status_code == 200  # still resumable
            swept = operator.post(f"{API}/storage/sweep", json={"grace_seconds": 0}).json()
            assert swept["uploads_aborted"] >= 1, swept
        assert not [k for k in keys(seaweedfs, bucket, f"{PREFIX}/uploads/") if sid in k]
        assert http.get(f"{API}/uploads/{sid}").status_code == 404
        s3 = s3_client(seaweedfs.endpoint)
        pending = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{PREFIX}/uploads/")
        assert not [u for u in pending.get("Uploads", []) if sid in u["Key"]]
