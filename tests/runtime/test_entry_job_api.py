"""JobApiClient against the fake control plane of tests/runtime/helpers.py."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from nimbus.errors import CorruptBlob, InvalidInput
from nimbus.runtime.checkpoints import checkpoint_from_bytes
from nimbus.runtime.job_api import (
    AttemptFenced,
    CancelRequested,
    ControlPlaneUnavailable,
    Heartbeat,
    HttpReporter,
    JobStop,
)
from nimbus.wire.job_api import AttemptSpec
from tests.runtime.helpers import Harness, ServerThread, blob_key
from tests.runtime.synthetic import tiny_images


def test_blobs_are_cached_by_hash_and_verified(harness: Harness) -> None:
    key = harness.job_api.add_blob(b"prepared bytes")
    with harness.client() as client:
        path = client.blob(key)
        assert path.read_bytes() == b"prepared bytes"
        assert path == harness.root / "cache" / key
        assert path.stat().st_mode & 0o777 == 0o444  # no other attempt writes a mapped blob
        assert client.blob(key) == path
        assert harness.job_api.requests.count(("GET", f"blobs/{key}")) == 1
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

        forged = blob_key(b"something else")
        harness.job_api.blobs[forged] = b"not what the hash says"
        with pytest.raises(CorruptBlob):
            client.blob(forged)
        assert not (harness.root / "cache" / forged).exists()
        with pytest.raises(InvalidInput):
            client.blob("sha256/../../etc/passwd")


def test_tenant_scoped_keys_are_cached_by_their_hash(harness: Harness) -> None:
    """With encryption at rest, blob keys carry the tenant (``tenants/<id>/sha256/...``);
    the tenant's cache keeps them under the hash alone."""
    plain = harness.job_api.add_blob(b"sealed at rest")
    scoped = f"tenants/7/{plain}"
    harness.job_api.blobs[scoped] = b"sealed at rest"
    with harness.client() as client:
        path = client.blob(scoped)
        assert path == harness.root / "cache" / plain and path.read_bytes() == b"sealed at rest"
        assert harness.job_api.requests.count(("GET", f"blobs/{scoped}")) == 1
        for bad in (f"tenants/0/{plain}", f"tenants/x/{plain}", f"tenants/7/../{plain}"):
            with pytest.raises(InvalidInput):
                client.blob(bad)


def test_a_poisoned_cache_file_is_detected_and_replaced(harness: Harness) -> None:
    """Issue 8, finding 2: a job that can write its tenant's cache must not be able to feed
    a later job other data than the blob's hash names."""
    data = os.urandom(64 * 1024)
    key = harness.job_api.add_blob(data)
    with harness.client() as client:
        path = client.blob(key)
        path.write_bytes(b"poisoned training data")
        os.utime(path, (1, 1))
        assert client.blob(key) == path and path.read_bytes() == data
        assert path.stat().st_mtime > 1  # reuse marks it used, for the cache's sweep
        assert harness.job_api.requests.count(("GET", f"blobs/{key}")) == 2

        path.unlink()
        elsewhere = harness.root / "elsewhere"
        elsewhere.write_bytes(b"poisoned training data")
        path.symlink_to(elsewhere)
        assert client.blob(key) == path and not path.is_symlink()
        assert path.read_bytes() == data and elsewhere.read_bytes() == b"poisoned training data"

        path.unlink()
        os.mkfifo(path)  # opening it for reading would block for ever
        assert client.blob(key) == path and path.read_bytes() == data
        assert harness.job_api.requests.count(("GET", f"blobs/{key}")) == 4
        assert client.blob(key) == path  # intact: reused, not downloaded again
        assert harness.job_api.requests.count(("GET", f"blobs/{key}")) == 4


def test_blob_downloads_share_the_cache_across_clients(harness: Harness) -> None:
    key = harness.job_api.add_blob(os.urandom(3 * 1024 * 1024))
    with harness.client() as one, harness.client() as two:
        paths: list[Path] = []
        threads = [
            threading.Thread(target=lambda c=c: paths.append(c.blob(key))) for c in (one, two)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    assert harness.job_api.requests.count(("GET", f"blobs/{key}")) == 1


def test_the_spec_is_read_as_its_wire_model(harness: Harness) -> None:
    data = tiny_images()
    harness.job_api.job(data, code=b"print(1)\n", entry="main.py", workers=2)
    with harness.client() as client:
        spec = client.spec()
    assert isinstance(spec, AttemptSpec)
    assert (spec.job_id, spec.attempt_id, spec.attempt, spec.workers) == ("job_1", "att_1", 1, 2)
    assert spec.code is not None and (spec.code.entry, spec.code.format) == ("main.py", "py")
    assert spec.dataset is not None and spec.dataset["classes"] == list(data.classes)


def test_5xx_and_a_restarting_server_are_retried(harness: Harness) -> None:
    harness.job_api.failures = 2
    with harness.client() as client:
        client.metrics(1, {"loss": 0.5})
        assert harness.job_api.metrics == [("att_1", 1, {"loss": 0.5})]

        port = harness.server.port
        harness.server.stop()

        def restart() -> None:
            time.sleep(0.6)
            harness.server = ServerThread(harness.job_api.app(), port=port).start()

        thread = threading.Thread(target=restart)
        thread.start()
        client.metrics(2, {"loss": 0.25})  # waits through the restart
        thread.join()
        assert harness.job_api.metrics[-1] == ("att_1", 2, {"loss": 0.25})


def test_gives_up_after_the_retry_window(harness: Harness) -> None:
    harness.job_api.failures = 10_000
    with harness.client(retry_seconds=0.3) as client:
        start = time.monotonic()
        with pytest.raises(ControlPlaneUnavailable) as caught:
            client.metrics(1, {"loss": 0.5})
        assert time.monotonic() - start < 3
        assert not isinstance(caught.value, Exception)  # user code cannot swallow it
        assert client.heartbeat() is False  # best effort: no retry, no error


def test_a_replaced_attempt_is_fenced(harness: Harness) -> None:
    with harness.client() as client:
        harness.job_api.new_attempt()
        for call in (client.spec, client.heartbeat, lambda: client.progress(1, 1, 1, 1)):
            with pytest.raises(AttemptFenced):
                call()


def test_progress_is_throttled_but_keeps_epoch_ends(harness: Harness) -> None:
    now = [100.0]
    with harness.client(clock=lambda: now[0], progress_interval=0.25) as client:
        for batch in range(1, 11):
            client.progress(1, 2, batch, 10)
            now[0] += 0.1
    sent = [(p["batch"], p["batches"]) for p in harness.job_api.progress]
    assert sent == [(1, 10), (4, 10), (7, 10), (10, 10)]


def test_heartbeat_reports_cancel_and_fence(harness: Harness) -> None:
    stops: list[JobStop] = []
    with harness.client() as client:
        with Heartbeat(client, 0.05, stops.append):
            deadline = time.monotonic() + 5
            while harness.job_api.heartbeats < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert stops == []
            harness.job_api.cancel = True
            while not stops:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert isinstance(stops[0], CancelRequested)

        harness.job_api.cancel = False
        harness.job_api.new_attempt()
        with Heartbeat(client, 0.05, stops.append):
            while len(stops) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert isinstance(stops[1], AttemptFenced)


def test_checkpoints_upload_in_order_behind_training_and_a_fence_surfaces(
    harness: Harness,
) -> None:
    with harness.client() as client:
        reporter = HttpReporter(client, label="epoch")
        weights = torch.zeros(3)
        reporter.save_checkpoint({"epoch": 1, "w": weights})
        weights += 1  # the caller goes on training: what was saved is what it was then
        reporter.save_checkpoint({"epoch": 2, "w": weights})
        restored = reporter.load_checkpoint()  # waits for the uploads in flight
        assert [step for step, _, _ in harness.job_api.checkpoints] == [1, 2]
        assert restored is not None and restored["w"].tolist() == [1.0, 1.0, 1.0]
        first = checkpoint_from_bytes(harness.job_api.checkpoints[0][1])
        assert first["w"].tolist() == [0.0, 0.0, 0.0]

        harness.job_api.new_attempt()  # this attempt is replaced
        reporter.save_checkpoint({"epoch": 3, "w": weights})  # returns: uploads behind
        with pytest.raises(AttemptFenced):
            reporter.flush()
        reporter.flush()  # raised once
