"""The direct-transfers capability over both real S3 servers (SeaweedFS and moto): a
multipart upload driven by id through presigned part URLs, listing its parts, joining them,
aborting, presigned GETs and copies inside the bucket; and its absence on the local and
memory stores."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import httpx
import pytest

from nimbus.storage.direct import (
    ObjectChanged,
    StoredPart,
    direct_transfers,
    part_count,
    part_length,
    part_size_for,
)
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.storage.s3 import S3ObjectStore
from tests.helpers_s3 import s3_store

MIB = 1024 * 1024


@pytest.fixture(params=["seaweedfs", "moto"])
def store(request: pytest.FixtureRequest) -> S3ObjectStore:
    server = request.getfixturevalue("seaweedfs" if request.param == "seaweedfs" else "moto_server")
    bucket = server.ensure_bucket("direct-contract")
    return s3_store(server.endpoint, bucket, f"c{secrets.token_hex(4)}")


def test_parts_go_up_by_presigned_urls_and_join(
    store: S3ObjectStore, request: pytest.FixtureRequest
) -> None:
    # moto's server does not check presigned signatures; SeaweedFS (as AWS) does.
    checks_signatures = request.node.callspec.params["store"] == "seaweedfs"
    direct = direct_transfers(store)
    assert direct is not None
    data = os.urandom(13 * MIB)
    key = "uploads/1/s/source"
    upload_id = direct.start_upload(key)
    size = part_size_for(len(data))
    numbers = range(1, part_count(len(data), size) + 1)
    for number in reversed(numbers):  # any order
        lo = (number - 1) * size
        length = part_length(len(data), size, number)
        url = direct.part_url(key, upload_id, number, length, 60)
        part = data[lo : lo + length]
        if checks_signatures:  # the length is signed: a bigger or smaller part is refused
            assert httpx.put(url, content=part + b"extra").status_code == 403
            assert httpx.put(url, content=part[:-1]).status_code == 403
        assert httpx.put(url, content=part).status_code == 200
    parts = direct.parts(key, upload_id)
    assert [p.number for p in parts] == [1, 2] and [p.size for p in parts] == [8 * MIB, 5 * MIB]
    assert parts[0].etag.strip('"') == hashlib.md5(data[: 8 * MIB]).hexdigest()
    direct.complete_upload(key, upload_id, parts)
    assert store.size(key) == len(data)
    with pytest.raises(KeyError):
        direct.parts(key, upload_id)  # the upload is over
    direct.copy(key, "sha256/aa/" + "a" * 64)
    assert store.size("sha256/aa/" + "a" * 64) == len(data)
    got = httpx.get(direct.get_url(key, 60, "data.bin"))
    assert got.status_code == 200 and got.content == data
    assert "data.bin" in got.headers.get("content-disposition", "")


def test_an_aborted_upload_leaves_nothing(store: S3ObjectStore) -> None:
    direct = direct_transfers(store)
    assert direct is not None
    key = "uploads/1/t/source"
    upload_id = direct.start_upload(key)
    url = direct.part_url(key, upload_id, 1, 100, 60)
    assert httpx.put(url, content=b"x" * 100).status_code == 200
    direct.abort_upload(key, upload_id)
    direct.abort_upload(key, upload_id)  # again: ignored
    with pytest.raises(KeyError):
        direct.parts(key, upload_id)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        direct.copy("uploads/1/none", "sha256/bb/" + "b" * 64)


def test_a_create_only_join_never_replaces_an_object_and_keeps_the_upload(
    store: S3ObjectStore, tmp_path: Path
) -> None:
    """If-None-Match on CompleteMultipartUpload, which direct uploads to a content-addressed
    key rely on: refused while the key exists, the upload kept to complete later."""
    direct = direct_transfers(store)
    assert direct is not None
    key = "sha256/cc/" + "c" * 64

    def upload(data: bytes) -> tuple[str, list[StoredPart]]:
        upload_id = direct.start_upload(key)
        assert httpx.put(direct.part_url(key, upload_id, 1, len(data), 60), content=data).is_success
        return upload_id, direct.parts(key, upload_id)

    first, second = upload(b"first" * 100), upload(b"other" * 100)
    etag = direct.complete_upload(key, *first, create_only=True)
    with pytest.raises(FileExistsError):
        direct.complete_upload(key, *second, create_only=True)
    assert direct.parts(key, second[0])  # kept
    assert (
        direct.download(key, tmp_path / "got", etag) == hashlib.sha256(b"first" * 100).hexdigest()
    )
    assert (tmp_path / "got").read_bytes() == b"first" * 100
    store.delete(key)
    other = direct.complete_upload(key, *second, create_only=True)  # the key is free again
    assert other != etag
    with pytest.raises(ObjectChanged):
        direct.download(key, tmp_path / "stale", etag)  # no longer the version named


def test_an_object_replaced_after_its_version_was_looked_up_is_not_read_as_it(
    store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back's ranged GETs carry ``If-Match`` the version looked up first: replaced
    in between, the server refuses them (412) and the read stops."""
    direct = direct_transfers(store)
    assert direct is not None
    key = "sha256/ce/" + "e" * 64
    (tmp_path / "first").write_bytes(b"first" * 1000)
    store.put_file(key, tmp_path / "first")
    looked_up = direct.stat(key)
    store.delete(key)
    (tmp_path / "other").write_bytes(b"other" * 1000)
    store.put_file(key, tmp_path / "other")
    monkeypatch.setattr(type(direct), "stat", lambda self, k: looked_up)  # the old version
    with pytest.raises(ObjectChanged):
        direct.download(key, tmp_path / "x")


def test_local_and_memory_stores_have_no_direct_transfers(tmp_path: Path) -> None:
    assert direct_transfers(LocalObjectStore(tmp_path / "blobs")) is None
    assert direct_transfers(MemoryObjectStore()) is None


def test_part_sizes() -> None:
    assert part_size_for(1) == 8 * MIB and part_count(1, 8 * MIB) == 1
    assert part_count(16 * MIB, 8 * MIB) == 2 and part_count(16 * MIB + 1, 8 * MIB) == 3
    huge = 200 * 1024**3
    size = part_size_for(huge)
    assert part_count(huge, size) <= 10_000 and size % MIB == 0
    assert part_length(10, 8, 2) == 2
