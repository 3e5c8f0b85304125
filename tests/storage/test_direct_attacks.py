"""A member token in a lying client's hands, against a real control plane on SeaweedFS:
direct uploads that declare one file's hash and send other bytes. The parts go to the
content-addressed key itself, so the control plane must keep those bytes from ever being
recorded, trusted by another upload, or taking the place of somebody else's blob
(services/uploads.py, services/blobs.py: claims)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.client import uploads
from nimbus.client.direct import Remembered, ResumeBook, file_identity
from nimbus.digests import FileDigest, file_sha256
from nimbus.errors import NotFound, UploadMismatch
from nimbus.storage.blobs import key_for
from tests.api.conftest import error_of, make_token
from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess
from tests.helpers_s3 import SeaweedFS, s3_client
from tests.storage.test_direct import dataset_tar, direct_server, keys, sdk, sha256_of

API = "/api/v1"
MIB = 1024 * 1024
PREFIX = "attacks"


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.ensure_bucket("nimbus-direct")


@pytest.fixture(scope="module")
def server(
    seaweedfs: SeaweedFS, bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("attacks") / "home"
    with direct_server(seaweedfs, bucket, PREFIX, home) as server:
        yield server


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the SDK reads through to hash them itself, in order."""
    seen: list[Path] = []

    def counted(path: Path) -> str:
        seen.append(path)
        return file_sha256(path)

    monkeypatch.setattr(uploads, "file_sha256", counted)
    return seen


def begin(http: httpx.Client, name: str, size: int, sha256: str) -> dict[str, Any]:
    body = {"filename": "f.tar", "size": size, "sha256": sha256}
    response = http.post(f"{API}/datasets/{name}/uploads", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def send(http: httpx.Client, session: dict[str, Any], data: bytes) -> list[str]:
    """PUT ``data`` as the session's parts; returns the part URLs used."""
    numbers = list(range(1, session["parts"] + 1))
    urls = http.post(f"{API}/uploads/{session['id']}/parts", json={"numbers": numbers}).json()
    for number, url in urls["urls"].items():
        lo = (int(number) - 1) * session["part_size"]
        response = httpx.put(url, content=data[lo : lo + session["part_size"]])
        assert response.status_code == 200, response.text
    return list(urls["urls"].values())


def complete(http: httpx.Client, session: dict[str, Any], sha256: str) -> httpx.Response:
    return http.post(f"{API}/uploads/{session['id']}/complete", json={"sha256": sha256})


def forge(data: bytes) -> bytes:
    forged = bytearray(data)
    forged[len(forged) // 2] ^= 0x01
    return bytes(forged)


def refuse_other_bytes(
    server: ServerProcess,
    tmp_path: Path,
    seed: int,
    send: Callable[[httpx.Client, dict[str, Any], bytes, list[int]], None],
    names: Callable[[], list[str]],
) -> None:
    """A staged upload whose two parts hold other bytes than declared is refused at its
    completion (400 upload_mismatch), and leaves no dataset, no session and, by ``names``
    (the store's listing), nothing in the store."""
    data = dataset_tar(tmp_path / "v.tar", 9 * MIB, seed=seed).read_bytes()
    digest = sha256_of(tmp_path / "v.tar")
    with server.client(make_token(server, "member", f"liar-{seed}")) as http:
        session = begin(http, "stolen", len(data), digest)
        send(http, session, forge(data), [1, 2])
        response = complete(http, session, digest)
        assert response.status_code == 400, response.text
        assert error_of(response)["code"] == "upload_mismatch"
        assert http.get(f"{API}/datasets/stolen").status_code == 404
        assert http.get(f"{API}/uploads/{session['id']}").status_code == 404
    assert not [n for n in names() if digest in n or session["id"] in n]


def stored(seaweedfs: SeaweedFS, bucket: str, sha256: str) -> bytes | None:
    s3 = s3_client(seaweedfs.endpoint)
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{key_for(sha256)}")["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    return bytes(body.read())


def test_the_parts_go_to_the_content_addressed_key_and_nothing_is_copied(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "d.tar", 9 * MIB, seed=11)
    data, digest = source.read_bytes(), sha256_of(source)
    token = make_token(server, "member", "keyed")
    with server.client(token) as http:
        session = begin(http, "keyed", len(data), digest)
        urls = send(http, session, data)
        assert all(f"/{PREFIX}/sha256/{digest[:2]}/{digest}?" in url for url in urls)
        response = complete(http, session, digest)
        assert response.status_code == 201, response.text
    assert stored(seaweedfs, bucket, digest) == data
    assert not keys(seaweedfs, bucket, f"{PREFIX}/uploads/")  # no staged copy, no record
    log = server.log()
    assert f"upload {session['id']} ({len(data)} bytes)" in log and "parts at the key" in log


def test_a_lie_at_the_key_is_refused_deleted_and_then_the_honest_upload_works(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "v.tar", 9 * MIB, seed=12)
    data, digest = source.read_bytes(), sha256_of(source)
    liar = make_token(server, "member", "liar")
    with server.client(liar) as http:
        session = begin(http, "stolen", len(data), digest)
        send(http, session, forge(data))
        response = complete(http, session, digest)
        assert response.status_code == 400, response.text
        assert error_of(response)["code"] == "upload_mismatch"
        assert http.get(f"{API}/datasets/stolen").status_code == 404
        assert http.get(f"{API}/uploads/{session['id']}").status_code == 404
    assert stored(seaweedfs, bucket, digest) is None  # the forged object went at once
    victim = make_token(server, "member", "victim")
    with sdk(server, victim, tmp_path / "client") as api:
        version = api.upload_dataset("real", source)
        assert version.source_hash == digest
        api.download_dataset("real", tmp_path / "out")
    assert (tmp_path / "out" / "v.tar").read_bytes() == data
    assert stored(seaweedfs, bucket, digest) == data


def test_a_lie_about_a_stored_blob_can_neither_replace_nor_remove_it(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    source = dataset_tar(tmp_path / "s.tar", 9 * MIB, seed=13)
    data, digest = source.read_bytes(), sha256_of(source)
    victim = make_token(server, "member", "owner")
    liar = make_token(server, "member", "forger")
    with server.client(liar) as http:
        # Begun before the victim's upload: the key is free, the parts go there...
        early = begin(http, "early", len(data), digest)
        send(http, early, forge(data))
        with sdk(server, victim, tmp_path / "client") as api:
            api.upload_dataset("mine", source)  # ...and the victim's version is recorded first
        assert stored(seaweedfs, bucket, digest) == data
        # The key is taken: the liar's join never happens there; it restarts, staged.
        response = complete(http, early, digest)
        assert response.status_code == 409, response.text
        assert error_of(response)["code"] == "upload_restarted"
        shown = http.get(f"{API}/uploads/{early['id']}")
        assert shown.status_code == 200, shown.text
        again = shown.json()
        assert again["uploaded"] == []
        urls = send(http, again, forge(data))
        assert all(f"/{PREFIX}/uploads/" in url for url in urls)
        response = complete(http, early, digest)
        assert error_of(response)["code"] == "upload_mismatch"
        # Begun after: staged from the start, never near the stored blob.
        late = begin(http, "late", len(data), digest)
        assert all(f"/{PREFIX}/uploads/" in url for url in send(http, late, forge(data)))
        assert error_of(complete(http, late, digest))["code"] == "upload_mismatch"
        assert http.get(f"{API}/datasets").json() == {"datasets": []}
    assert stored(seaweedfs, bucket, digest) == data  # the victim's blob, untouched
    with sdk(server, victim, tmp_path / "client") as api:
        api.download_dataset("mine", tmp_path / "out")
    assert (tmp_path / "out" / "s.tar").read_bytes() == data
    assert not keys(seaweedfs, bucket, f"{PREFIX}/uploads/")


def test_an_object_nobody_refers_to_at_the_key_gives_way_to_the_checked_upload(
    server: ServerProcess, seaweedfs: SeaweedFS, bucket: str, tmp_path: Path
) -> None:
    """Whatever lies at a free key (here put there with the cloud's own client, as a
    crashed upload could leave it) is not trusted: the join replaces it, then is checked."""
    source = dataset_tar(tmp_path / "o.tar", 9 * MIB, seed=14)
    data, digest = source.read_bytes(), sha256_of(source)
    token = make_token(server, "member", "orphans")
    with server.client(token) as http:
        session = begin(http, "orphan", len(data), digest)
        s3 = s3_client(seaweedfs.endpoint)
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key_for(digest)}", Body=forge(data))
        send(http, session, data)
        response = complete(http, session, digest)
        assert response.status_code == 201, response.text
    assert stored(seaweedfs, bucket, digest) == data


def test_completing_with_another_hash_than_declared_is_refused_and_keeps_the_upload(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = os.urandom(1 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    token = make_token(server, "member", "switch")
    with server.client(token) as http:
        session = begin(http, "switch", len(data), digest)
        send(http, session, data)
        response = complete(http, session, "0" * 64)
        assert response.status_code == 400 and digest in error_of(response)["message"]
        assert http.get(f"{API}/uploads/{session['id']}").status_code == 200  # kept
        assert http.delete(f"{API}/uploads/{session['id']}").status_code == 204
        bad = http.post(
            f"{API}/datasets/switch/uploads", json={"filename": "f", "size": 1, "sha256": "xyz"}
        )
        assert bad.status_code == 400 and "sha256" in error_of(bad)["message"]


def test_the_sdk_sends_the_parts_again_when_its_upload_is_restarted(
    server: ServerProcess,
    seaweedfs: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An upload begun (its key free), interrupted, then resumed after another tenant
    stored the same file: the server restarts it staged, the SDK sends the parts again."""
    source = dataset_tar(tmp_path / "r.tar", 9 * MIB, seed=15)
    digest = sha256_of(source)
    mine, theirs = make_token(server, "member", "resumer"), make_token(server, "member", "racer")
    with server.client(mine) as http:
        session = begin(http, "racy", source.stat().st_size, digest)
    with sdk(server, mine, tmp_path / "a") as api:
        identity = file_identity(api.url, "racy", source, {"filename": "r.tar"})
        ResumeBook(tmp_path / "a" / "uploads").remember(identity, session["id"], digest)
        found = ResumeBook(tmp_path / "a" / "uploads").find(identity)
        assert found == Remembered(session["id"], digest)
        with sdk(server, theirs, tmp_path / "b") as other:
            other.upload_dataset("first", source)
        version = api.upload_dataset("racy", source)
    assert version.source_hash == digest
    assert f"upload {session['id']}: sending the parts again" in capsys.readouterr().err
    assert stored(seaweedfs, bucket, digest) == source.read_bytes()
    assert not keys(seaweedfs, bucket, f"{PREFIX}/uploads/")


@pytest.mark.parametrize("book", ["with the hash", "from before it kept the hash"])
def test_a_resumed_upload_declares_the_hash_it_began_with_without_reading_the_file_first(
    server: ServerProcess,
    seaweedfs: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    hashed: list[Path],
    book: str,
) -> None:
    """The hash a session was opened with is its parts' key: resumed, the SDK goes on with
    it (the server checks the bytes against it at the end) instead of reading a large file
    through once more; a book an older SDK wrote, with no hash, has the file hashed again."""
    seed = 16 if book == "with the hash" else 17
    source = dataset_tar(tmp_path / "h.tar", 9 * MIB, seed=seed)
    digest = sha256_of(source)
    token = make_token(server, "member", f"rehash-{seed}")
    with server.client(token) as http:
        session = begin(http, "kept", source.stat().st_size, digest)
    with sdk(server, token, tmp_path / "a") as api:
        identity = file_identity(api.url, "kept", source, {"filename": "h.tar"})
        resume = ResumeBook(tmp_path / "a" / "uploads")
        resume.remember(identity, session["id"], digest)
        if book != "with the hash":
            [path] = resume.directory.glob("*.json")
            record = json.loads(path.read_text())
            del record["sha256"]
            path.write_text(json.dumps(record))
        version = api.upload_dataset("kept", source)
    assert version.source_hash == digest
    assert hashed == ([] if book == "with the hash" else [source])
    assert stored(seaweedfs, bucket, digest) == source.read_bytes()
    assert not list(resume.directory.glob("*.json"))  # done: forgotten


def test_a_hash_begun_in_the_background_is_declared_and_a_stale_one_is_refused(
    server: ServerProcess,
    seaweedfs: SeaweedFS,
    bucket: str,
    tmp_path: Path,
    hashed: list[Path],
) -> None:
    """The CLI hashes a large file in a thread while it starts (nimbus.digests): the SDK
    declares that hash and reads the file no more. It is only ever declared: a file
    rewritten in place after the hash began, with its size and modification time put back
    (so the digest still seems to describe it), is refused by the server's read-back, and
    nothing is recorded or left in the bucket."""
    token = make_token(server, "member", "early-hash")
    source = dataset_tar(tmp_path / "e.tar", 9 * MIB, seed=18)
    with sdk(server, token, tmp_path / "a") as api:
        version = api.upload_dataset("early", source, digest=FileDigest(source))
        assert version.source_hash == sha256_of(source)
        assert hashed == []
        assert stored(seaweedfs, bucket, sha256_of(source)) == source.read_bytes()

        # The CLI begins the hash itself, before it loads the SDK.
        cli = Nimbus({"NIMBUS_HOME": str(tmp_path / "cli"), "NIMBUS_URL": server.url})
        env = {"NIMBUS_TOKEN": token, "NIMBUS_DIRECT_MIN_BYTES": "1"}
        other = dataset_tar(tmp_path / "c.tar", 9 * MIB, seed=21)
        version = cli.json("datasets", "upload", "early-cli", str(other), env=env)
        assert version["source_hash"] == sha256_of(other)
        assert hashed == []

        stale = dataset_tar(tmp_path / "s.tar", 9 * MIB, seed=19)
        declared = sha256_of(stale)
        digest = FileDigest(stale)
        digest.result()
        before = stale.stat()
        replacement = dataset_tar(tmp_path / "r.tar", 9 * MIB, seed=20).read_bytes()
        assert len(replacement) == before.st_size
        stale.write_bytes(replacement)
        os.utime(stale, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert digest.describes(stale)
        with pytest.raises(UploadMismatch, match="not the file declared"):
            api.upload_dataset("stale", stale, digest=digest)
        assert hashed == []
        with pytest.raises(NotFound):
            api.get_dataset("stale")
    assert stored(seaweedfs, bucket, declared) is None
    assert stored(seaweedfs, bucket, sha256_of(stale)) is None
