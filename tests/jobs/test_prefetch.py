"""A node fills a tenant's download cache from presigned URLs (real SeaweedFS): verified,
read-only, under the lock a job would take; tampered bytes and a symlink planted by a job
leave nothing behind; a job on an S3 server gets its dataset that way."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.jobs import prefetch
from nimbus.storage.blobs import BlobStore
from nimbus.storage.direct import direct_transfers
from tests.api.conftest import csv_bytes
from tests.helpers import ServerProcess, passable_dir
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


class SlowBlobServer:
    """A loopback HTTP server that serves blobs slowly and counts the GETs in flight."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.in_flight = 0
        self.most = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    owner.in_flight += 1
                    owner.most = max(owner.most, owner.in_flight)
                try:
                    time.sleep(0.3)
                    data = owner.blobs[self.path.lstrip("/")]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with lock:
                        owner.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{key}"

    def __enter__(self) -> SlowBlobServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("workers", [1, 3])
def test_a_jobs_inputs_are_fetched_at_most_workers_at_a_time(tmp_path: Path, workers: int) -> None:
    data = {f"blob {i}".encode(): None for i in range(7)}
    blobs = {f"sha256/{d[:2]}/{d}": b for b in data for d in [hashlib.sha256(b).hexdigest()]}
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    claims = prefetch.claim(cache, {key: len(b) for key, b in blobs.items()})
    with SlowBlobServer(blobs) as server:
        assert prefetch.fill(claims, server.url, workers) == len(blobs)
    assert server.most == workers  # bounded, and used
    for key, b in blobs.items():
        assert (cache / key).read_bytes() == b and unlocked(cache / f"{key}.lock")


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


@pytest.mark.slow
def test_sandboxed_jobs_of_other_uids_use_what_the_node_fetched(
    seaweedfs: SeaweedFS,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Root fetches into the tenant's cache (setgid, the tenant's group); each attempt runs
    as a uid of its own and reads the fetched files, and takes their lock files."""
    bucket = seaweedfs.ensure_bucket("prefetch-sandbox")
    env = {
        **aws_env(seaweedfs.endpoint),
        "NIMBUS_STORAGE_URL": f"s3://{bucket}/n",
        "NIMBUS_JOB_ISOLATION": "sandbox",
        "NIMBUS_EXECUTOR": "local",
        "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    }
    source = tmp_path / "reviews.csv"
    source.write_bytes(csv_bytes("sandboxed-prefetch"))
    with passable_dir() as base, ServerProcess(base / "home", env=env) as server:
        settings = Settings(home=tmp_path / "client")
        with Client(server.url, server.admin_token, settings=settings) as api:
            version = api.upload_dataset("reviews", source)
            for _ in range(2):  # the second attempt (another uid) finds them cached
                job = api.submit_job("reviews", "text", params={"epochs": "2"})
                done = api.wait_job(job.id, timeout=300)
                assert done.state == "succeeded", server.log()[-3000:]
        log = server.log()
        cache = next(p for p in (server.home / "cache").iterdir() if p.is_dir())
        for name, entry in version.files.items():
            if name == "source":
                continue
            assert log.count(f"prefetched {entry.key}") == 1, name
            fetched = (cache / entry.key).stat()
            assert fetched.st_uid == 0 and fetched.st_mode & 0o777 == 0o444
            assert fetched.st_gid == cache.stat().st_gid  # the tenant's group
            lock = (cache / f"{entry.key}.lock").stat()
            assert lock.st_mode & 0o777 == 0o660 and lock.st_gid == cache.stat().st_gid
