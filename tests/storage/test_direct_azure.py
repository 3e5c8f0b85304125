"""Direct transfers against a real control plane on Azurite: blocks go straight into the
container through a write-only SAS for the session's staging blob, the server commits them,
checks the committed size and the hash from the container before it records anything, and a
client holding that SAS (which Azure cannot scope to one operation, nor to a size) gains
nothing by lying: not with other bytes, not with a bigger block, not by committing the blob
itself. Tenants cannot reach each other's sessions, an interrupted upload resumes from the
blocks already there, and the sweep removes an abandoned one (uncommitted blocks included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.client.direct import ResumeBook, file_identity
from nimbus.errors import CorruptBlob
from nimbus.storage.blobs import key_for
from tests.api.conftest import error_of, make_token
from tests.helpers import ServerProcess
from tests.helpers_azure import Azurite
from tests.storage.test_direct import dataset_tar, sdk, sha256_of
from tests.storage.test_direct_attacks import begin, complete, forge, refuse_other_bytes

API = "/api/v1"
MIB = 1024 * 1024
PREFIX = "azdirect"
CONTAINER = "nimbus-direct"


@pytest.fixture(scope="module")
def server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    azurite.ensure_container(CONTAINER)
    env = {
        **azurite.env(),
        "NIMBUS_STORAGE_URL": f"az://{CONTAINER}/{PREFIX}",
        "NIMBUS_SCHEDULER_ENABLED": "false",
        "NIMBUS_PRESIGN_SECONDS": "60",
    }
    with ServerProcess(tmp_path_factory.mktemp("azdirect") / "home", env=env) as server:
        yield server


def names(azurite: Azurite, prefix: str = "", *, uncommitted: bool = True) -> list[str]:
    """Every blob under the store's prefix, uncommitted ones (blocks only) included."""
    container = azurite.client().get_container_client(CONTAINER)
    include = ["uncommittedblobs"] if uncommitted else []
    listed = container.list_blobs(name_starts_with=f"{PREFIX}/{prefix}", include=include)
    return sorted(blob.name for blob in listed)


def send(http: httpx.Client, session: dict[str, Any], data: bytes, numbers: list[int]) -> None:
    urls = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": numbers}).json()
    for number, url in urls["urls"].items():
        assert f"/{PREFIX}/uploads/" in url and "sp=w&" in url  # staged, write only
        lo = (int(number) - 1) * session["part_size"]
        response = httpx.put(url, content=data[lo : lo + session["part_size"]])
        assert response.status_code == 201, response.text


def test_an_upload_is_staged_checked_copied_and_downloads_directly(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "digits.tar", 9 * MIB, seed=21)
    token = make_token(server, "member", "az-up")
    with sdk(server, token, tmp_path / "client") as api:
        version = api.upload_dataset("digits", source)
        key = version.files["source"].key
        assert key == key_for(sha256_of(source))
        assert f"{PREFIX}/{key}" in names(azurite)
        assert names(azurite, "uploads/") == []  # staging blob and record gone
        assert "staged, then copied" in server.log()

        api.download_dataset("digits", tmp_path / "out")
        assert (tmp_path / "out" / "digits.tar").read_bytes() == source.read_bytes()
        with server.client(token) as http:
            link = http.get(f"{API}/datasets/digits/versions/1/files/source/link").json()
        assert "sp=r&" in link["url"] and "sig=" in link["url"]  # a read SAS, this blob

        # A byte flipped in the container with Azure's own client: refused, no file.
        blob = azurite.client().get_blob_client(CONTAINER, f"{PREFIX}/{key}")
        data = bytearray(blob.download_blob().readall())
        data[4321] ^= 0xFF
        blob.upload_blob(bytes(data), overwrite=True)
        with pytest.raises(CorruptBlob):
            api.download_dataset("digits", tmp_path / "bad")
        assert not (tmp_path / "bad" / "digits.tar").exists()


def test_other_bytes_than_declared_are_refused_and_leave_nothing(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    refuse_other_bytes(server, tmp_path, 22, send, lambda: names(azurite))


def test_a_block_bigger_than_declared_is_refused_before_anything_is_read(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    data = dataset_tar(tmp_path / "b.tar", 1 * MIB, seed=23).read_bytes()
    token = make_token(server, "member", "az-big")
    with server.client(token) as http:
        session = begin(http, "big", len(data), sha256_of(tmp_path / "b.tar"))
        # The SAS signs no size: Azure takes the block; the server's block list check does not.
        send(http, session, data + b"\0" * MIB, [1])
        response = complete(http, session, sha256_of(tmp_path / "b.tar"))
        assert response.status_code == 400, response.text
        assert f"holds {len(data) + MIB} bytes, expected {len(data)}" in response.text
        committed = names(azurite, "uploads/", uncommitted=False)
        assert not [n for n in committed if n.endswith("/source") and session["id"] in n]
        send(http, session, data, [1])  # the same block again, right this time
        assert complete(http, session, sha256_of(tmp_path / "b.tar")).status_code == 201


def test_a_client_committing_the_staging_blob_itself_gains_nothing(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    data = dataset_tar(tmp_path / "c.tar", 1 * MIB, seed=24).read_bytes()
    digest = sha256_of(tmp_path / "c.tar")
    token = make_token(server, "member", "az-commit")
    with server.client(token) as http:
        session = begin(http, "self", len(data), digest)
        url = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": [1]}).json()
        blob_url = url["urls"]["1"].split("&comp=")[0]
        # A write SAS allows Put Blob too: the client writes the staging blob whole, and
        # bigger than declared. The committed size is checked before a byte is read.
        bigger = forge(data) + b"\0" * MIB
        put = httpx.put(blob_url, content=bigger, headers={"x-ms-blob-type": "BlockBlob"})
        assert put.status_code == 201, put.text
        response = complete(http, session, digest)
        assert error_of(response)["code"] == "upload_mismatch"
        assert f"holds {len(bigger)} bytes, not the {len(data)} declared" in response.text
        assert http.get(f"{API}/datasets/self").status_code == 404
    assert not [n for n in names(azurite) if digest in n or session["id"] in n]


def test_another_tenant_cannot_see_sign_complete_or_abort_an_upload(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = dataset_tar(tmp_path / "t.tar", 1 * MIB, seed=25).read_bytes()
    digest = sha256_of(tmp_path / "t.tar")
    owner = make_token(server, "member", "az-a")
    intruder = make_token(server, "member", "az-b")
    with server.client(owner) as http_a, server.client(intruder) as http_b:
        session = begin(http_a, "secret", len(data), digest)
        sid = session["id"]
        for response in [
            http_b.get(f"{API}/uploads/{sid}"),
            http_b.post(f"{API}/uploads/{sid}/parts", json={"numbers": [1]}),
            http_b.post(f"{API}/uploads/{sid}/complete", json={"sha256": digest}),
            http_b.delete(f"{API}/uploads/{sid}"),
        ]:
            assert response.status_code == 404, response.text
        send(http_a, session, data, [1])
        assert complete(http_a, session, digest).status_code == 201
        assert http_b.get(f"{API}/datasets/secret").status_code == 404


def test_an_interrupted_upload_resends_only_the_missing_blocks(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "r.tar", 9 * MIB, seed=26)
    data = source.read_bytes()
    token = make_token(server, "member", "az-resume")
    digest = sha256_of(source)
    with server.client(token) as http:
        session = begin(http, "resumed", len(data), digest)
        assert session["parts"] == 2
        send(http, session, data, [1])  # then the client died
    seen: list[tuple[int, int]] = []
    with sdk(server, token, tmp_path / "client") as api:
        identity = file_identity(api.url, "resumed", source, {"filename": source.name})
        ResumeBook(tmp_path / "client" / "uploads").remember(identity, session["id"], digest)
        version = api.upload_dataset(
            "resumed", source, progress=lambda done, total: seen.append((done, total))
        )
    assert version.source_hash == sha256_of(source)
    # Block 1 was counted as there from the start: only block 2 went.
    assert seen[0] == (8 * MIB, len(data)) and len(seen) == 2, seen
    assert names(azurite, "uploads/") == []


def test_an_abandoned_upload_and_its_blocks_are_swept(
    server: ServerProcess, azurite: Azurite, tmp_path: Path
) -> None:
    data = dataset_tar(tmp_path / "g.tar", 1 * MIB, seed=27).read_bytes()
    token = make_token(server, "member", "az-leaver")
    with server.client(token) as http:
        session = begin(http, "gone", len(data), sha256_of(tmp_path / "g.tar"))
        sid = session["id"]
        send(http, session, data, [1])
        assert [n for n in names(azurite, "uploads/") if n.endswith(f"{sid}/source")]
        with server.client() as operator:
            swept = operator.post(f"{API}/storage/sweep", json={"grace_seconds": 0}).json()
            assert swept["uploads_aborted"] >= 1, swept
        assert not [n for n in names(azurite, "uploads/") if sid in n]  # blocks too
        assert http.get(f"{API}/uploads/{sid}").status_code == 404
