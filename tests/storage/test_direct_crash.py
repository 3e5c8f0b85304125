"""A control plane SIGKILLed while it checks a direct upload (its claim on the content key
taken, the object joined or being joined, not yet read back): restarted, the next upload of
the same content finds the claim's holder dead, drops the claim and its unchecked object at
once (not after the garbage sweep's six-hour grace), and stores the content itself."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from contextlib import suppress
from pathlib import Path

from nimbus.errors import NimbusError
from nimbus.wire.datasets import DatasetVersion
from tests.api.conftest import make_token
from tests.helpers_s3 import SeaweedFS, s3_client
from tests.storage.test_direct import dataset_tar, direct_server, sdk, sha256_of

MIB = 1024 * 1024
PREFIX = "crash"


def claims(home: Path) -> list[tuple[str, int]]:
    """The claims in the server's metadata store: (holder plane, holder pid)."""
    with sqlite3.connect(f"file:{home / 'nimbus.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute(
            "SELECT holder_plane, holder_pid FROM blob_refs WHERE owner_kind = 'verify'"
        ).fetchall()


def test_a_claim_of_a_server_killed_mid_check_goes_with_the_next_upload(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    bucket = seaweedfs.ensure_bucket("nimbus-crash")
    source = dataset_tar(tmp_path / "big.tar", 32 * MIB, seed=7)
    digest = sha256_of(source)
    home = tmp_path / "home"
    server = direct_server(seaweedfs, bucket, PREFIX, home).start()
    try:
        token = make_token(server, "member", "crash")
        assert server.proc is not None
        crashed_pid = server.proc.pid
        failed: list[BaseException] = []

        def upload() -> None:
            try:
                with sdk(server, token, tmp_path / "first") as api:
                    api.upload_dataset("big", source)
            except NimbusError as exc:  # the server died under it
                failed.append(exc)

        uploading = threading.Thread(target=upload)
        uploading.start()
        deadline = time.monotonic() + 120
        while not claims(home):
            assert uploading.is_alive(), "the upload ended before its check was caught"
            assert time.monotonic() < deadline, "no claim was taken"
            time.sleep(0.005)
        server.kill()  # SIGKILL, mid-check
        uploading.join(60)
        assert failed
        [(plane, pid)] = claims(home)
        assert pid == crashed_pid and plane == (home / "instance-id").read_text().strip()

        server.start()  # the same control plane (same home, same id), a new process
        done: list[DatasetVersion] = []

        def again() -> None:
            with sdk(server, token, tmp_path / "second") as api, suppress(NimbusError):
                done.append(api.upload_dataset("big", source))

        second = threading.Thread(target=again)
        second.start()
        second.join(60)  # not the pin's 10-minute wait for the claim, nor the 6 h grace
        assert done, "the second upload waited for the dead server's claim"
        [version] = done
        assert version.source_hash == digest
        assert claims(home) == []
        assert "is dead; its unchecked object was deleted" in server.log()
        stored = s3_client(seaweedfs.endpoint).get_object(
            Bucket=bucket, Key=f"{PREFIX}/{version.files['source'].key}"
        )
        assert hashlib.sha256(stored["Body"].read()).hexdigest() == digest
    finally:
        server.kill()  # nothing to wait for: the test is over
