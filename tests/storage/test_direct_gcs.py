"""Direct transfers against a real control plane on fake-gcs-server, URLs V4-signed with a
service-account key made for the test: parts go straight into the bucket as objects of
their own, the server composes and checks them before it records anything, a lie is
refused and leaves nothing, a resumed upload keeps the parts whose MD5 matches, and
downloads are signed GETs checked against the hash. (The emulator verifies no signature:
what a URL may reach is tested on Azurite and, for S3, SeaweedFS.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.client.direct import ResumeBook, file_identity
from nimbus.storage.blobs import key_for
from tests.api.conftest import make_token
from tests.helpers import ServerProcess
from tests.helpers_gcs import FakeGCS, signing_key
from tests.storage.test_direct import dataset_tar, sdk, sha256_of
from tests.storage.test_direct_attacks import begin, refuse_other_bytes

API = "/api/v1"
MIB = 1024 * 1024
PREFIX = "gsdirect"
BUCKET = "nimbus-direct"


@pytest.fixture(scope="module")
def server(fake_gcs: FakeGCS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    fake_gcs.ensure_bucket(BUCKET)
    env = {
        **fake_gcs.env(),
        "GOOGLE_APPLICATION_CREDENTIALS": str(signing_key()),
        "NIMBUS_STORAGE_URL": f"gs://{BUCKET}/{PREFIX}",
        "NIMBUS_SCHEDULER_ENABLED": "false",
        "NIMBUS_PRESIGN_SECONDS": "60",
    }
    with ServerProcess(tmp_path_factory.mktemp("gsdirect") / "home", env=env) as server:
        yield server


def names(fake_gcs: FakeGCS, prefix: str = "") -> list[str]:
    listed = fake_gcs.client().list_blobs(BUCKET, prefix=f"{PREFIX}/{prefix}")
    return sorted(blob.name for blob in listed)


def send(http: httpx.Client, session: dict[str, Any], data: bytes, numbers: list[int]) -> None:
    urls = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": numbers}).json()
    for number, url in urls["urls"].items():
        assert f"/{PREFIX}/uploads/" in url and "X-Goog-Signature=" in url
        lo = (int(number) - 1) * session["part_size"]
        assert httpx.put(url, content=data[lo : lo + session["part_size"]]).status_code == 200


def test_an_upload_is_composed_checked_copied_and_downloads_directly(
    server: ServerProcess, fake_gcs: FakeGCS, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "digits.tar", 20 * MIB, seed=31)
    data = source.read_bytes()
    token = make_token(server, "member", "gs-up")
    digest = sha256_of(source)
    with server.client(token) as http:
        session = begin(http, "digits", len(data), digest)
        send(http, session, data, [1])  # part 1, then the client died
        send(http, session, b"\0" * len(data), [3])  # part 3 with other bytes
    seen: list[int] = []
    with sdk(server, token, tmp_path / "client") as api:
        identity = file_identity(api.url, "digits", source, {"filename": source.name})
        ResumeBook(tmp_path / "client" / "uploads").remember(identity, session["id"], digest)
        version = api.upload_dataset("digits", source, progress=lambda d, t: seen.append(d))
        # Part 1's MD5 matched and was kept; part 3's did not and went again, with part 2.
        assert seen[0] == 8 * MIB, seen[:3]
        key = version.files["source"].key
        assert key == key_for(sha256_of(source))
        assert names(fake_gcs, "uploads/") == []  # parts, staging object and record gone
        assert "staged, then copied" in server.log()
        api.download_dataset("digits", tmp_path / "out")
        assert (tmp_path / "out" / "f.tar").read_bytes() == data  # the session's name
        with server.client(token) as http:
            link = http.get(f"{API}/datasets/digits/versions/1/files/source/link").json()
        assert "X-Goog-Signature=" in link["url"] and f"/{PREFIX}/{key}?" in link["url"]


def test_other_bytes_than_declared_are_refused_and_leave_nothing(
    server: ServerProcess, fake_gcs: FakeGCS, tmp_path: Path
) -> None:
    refuse_other_bytes(server, tmp_path, 32, send, lambda: names(fake_gcs))
