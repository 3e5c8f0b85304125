"""A node fills a tenant's download cache from presigned URLs (real SeaweedFS): verified,
read-only, under the lock a job would take; tampered bytes and a symlink planted by a job
leave nothing behind; a job on an S3 server gets its dataset that way."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.jobs import prefetch
from nimbus.storage.blobs import BlobStore
from nimbus.storage.direct import direct_transfers
from tests.helpers import ServerProcess
from tests.helpers_s3 import SeaweedFS, aws_env, s3_store
from tests.storage.conftest import seaweedfs  # noqa: F401  (the session's server)


@pytest.fixture
def blobs(seaweedfs: SeaweedFS, tmp_path: Path) -> BlobStore:  # noqa: F811
    bucket = seaweedfs.ensure_bucket("prefetch")
    return BlobStore(s3_store(seaweedfs.endpoint, bucket, "p"), tmp_path / "staging")


def url_of(blobs: BlobStore, key: str) -> str:
    direct = direct_transfers(blobs.objects)
    assert direct is not None
    return direct.get_url(key, 60)


def unlocked(path: Path) -> bool:
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


def test_inputs_arrive_verified_and_read_only(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    ref = blobs.put_bytes(data)
    other = blobs.put_bytes(b"something else")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    claims = prefetch.claim(cache, {ref.key: ref.size, other.key: other.size})
    assert sorted(c.key for c in claims) == sorted([ref.key, other.key])
    # The second input's URL serves the first one's bytes: refused, nothing placed.
    urls = {ref.key: url_of(blobs, ref.key), other.key: url_of(blobs, ref.key)}
    assert prefetch.fill(claims, urls.get) == 1
    path = cache / ref.key
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256
    assert path.stat().st_mode & 0o777 == 0o444
    assert not (cache / other.key).exists()
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob(".*.tmp"))
    assert unlocked(cache / f"{ref.key}.lock") and unlocked(cache / f"{other.key}.lock")
    # Cached already: nothing to claim.
    assert prefetch.claim(cache, {ref.key: ref.size}) == []


def test_a_symlink_planted_in_the_cache_is_never_followed(blobs: BlobStore, tmp_path: Path) -> None:
    ref = blobs.put_bytes(b"payload")
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, cache / "sha256")  # what a job sharing the cache could do
    with pytest.raises(OSError):
        prefetch.claim(cache, {ref.key: ref.size})
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_a_job_on_s3_gets_its_dataset_from_the_bucket(
    seaweedfs: SeaweedFS,  # noqa: F811
    tmp_path: Path,
) -> None:
    from tests.e2e.conftest import QUICK_CNN, upload_digits

    bucket = seaweedfs.ensure_bucket("prefetch-job")
    env = {**aws_env(seaweedfs.endpoint), "NIMBUS_STORAGE_URL": f"s3://{bucket}/n"}
    with ServerProcess(tmp_path / "home", env=env) as server:
        settings = Settings(home=tmp_path / "client")
        with Client(server.url, server.admin_token, settings=settings) as api:
            digits = upload_digits(api, tmp_path / "data")
            job = api.wait_job(api.submit_job(digits, "cnn", params=QUICK_CNN).id, timeout=300)
            assert job.state == "succeeded", server.log()[-3000:]
            version = api.get_version(digits)
            # The model's files come back through presigned GETs as well.
            model = api.register_model("digits-cnn", job.id)
            paths = api.download_model("digits-cnn:1", tmp_path / "model")
            with server.client() as http:
                link = http.get("/api/v1/models/digits-cnn/versions/1/files/spec.json/link")
            assert link.status_code == 200 and "X-Amz-Signature=" in link.json()["url"]
        log = server.log()
        for path in paths:
            if path.name != "version.json":
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                assert model.files[path.name].key.endswith(digest)
    for name, entry in version.files.items():
        if name != "source":
            assert f"prefetched {entry.key}" in log, name
