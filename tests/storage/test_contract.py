"""One contract every object store backend passes, plus the content-addressing layer above."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nimbus.errors import CorruptBlob, NotFound
from nimbus.storage import BlobStore, ObjectStore, open_object_store
from nimbus.storage.azure import AzureObjectStore
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.storage.s3 import S3ObjectStore
from tests.storage.clouds import SERVERS
from tests.storage.conftest import cloud_for

BACKENDS = ["local", "memory", *SERVERS]
PART = 5 * 1024 * 1024  # S3's smallest part: a few of them make a multipart upload


@pytest.fixture(params=BACKENDS)
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_object_store(f"file://{tmp_path / 'objects'}")
    elif request.param == "memory":
        yield open_object_store("memory://")
    else:
        # One server per session; each test gets a prefix of its own in a shared bucket.
        cloud = cloud_for(request, request.param)
        yield cloud.store(cloud.bucket("contract"), f"t-{uuid.uuid4().hex}", part_size=PART)


def _where(objects: ObjectStore) -> tuple[str, str]:
    """The bucket (or container) and the prefix a cloud store keeps its objects under."""
    bucket = getattr(objects, "bucket", None) or getattr(objects, "container", "")
    return str(bucket), str(getattr(objects, "prefix", ""))


def _flip_byte(request: pytest.FixtureRequest, objects: ObjectStore, key: str, offset: int) -> None:
    """Corrupt one byte behind the store's back, with the backend's own tools."""
    backend = request.node.callspec.params["objects"]
    if isinstance(objects, MemoryObjectStore):
        objects.corrupt(key, offset)
    elif backend in SERVERS:
        bucket, prefix = _where(objects)
        cloud_for(request, backend).flip_byte(bucket, f"{prefix}/{key}", offset)
    else:
        assert isinstance(objects, LocalObjectStore)
        path = objects.local_path(key)
        assert path is not None
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.fixture
def blobs(objects: ObjectStore, tmp_path: Path) -> BlobStore:
    return BlobStore(objects, tmp_path / "staging")


def _file(tmp_path: Path, data: bytes, name: str = "src") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _azure_blocks(request: pytest.FixtureRequest, objects: ObjectStore, key: str) -> list[Any]:
    container, prefix = _where(objects)
    client = request.getfixturevalue("azurite").client()
    committed, _ = client.get_blob_client(container, f"{prefix}/{key}").get_block_list()
    return list(committed)


class TestObjectStoreContract:
    def test_put_open_roundtrip(self, objects: ObjectStore, tmp_path: Path) -> None:
        objects.put_file("a/b/c", _file(tmp_path, b"hello"))
        with objects.open("a/b/c") as f:
            assert f.read() == b"hello"
        assert objects.exists("a/b/c")
        assert objects.size("a/b/c") == 5

    def test_missing_key(self, objects: ObjectStore) -> None:
        assert not objects.exists("nope/x")
        with pytest.raises(KeyError):
            objects.open("nope/x")
        with pytest.raises(KeyError):
            objects.size("nope/x")

    def test_put_is_create_only(self, objects: ObjectStore, tmp_path: Path) -> None:
        objects.put_file("k/1", _file(tmp_path, b"one", "a"))
        second = _file(tmp_path, b"two", "b")
        objects.put_file("k/1", second)
        with objects.open("k/1") as f:
            assert f.read() == b"one"
        assert not second.exists()

    def test_large_object_in_parts(
        self, objects: ObjectStore, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        data = os.urandom(4 * PART + 12345)
        objects.put_file("big/1", _file(tmp_path, data))
        assert objects.size("big/1") == len(data)
        if isinstance(objects, S3ObjectStore):
            # S3 names a multipart upload's ETag after its part count.
            assert objects.etag("big/1").strip('"').endswith("-5")
        if isinstance(objects, AzureObjectStore):
            # Azure keeps the list of committed blocks: one per part.
            assert len(_azure_blocks(request, objects, "big/1")) == 5
        digest = hashlib.sha256()
        with objects.open("big/1") as f:
            while chunk := f.read(1024 * 1024):
                assert len(chunk) <= 1024 * 1024
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()

    def test_large_object_is_create_only(self, objects: ObjectStore, tmp_path: Path) -> None:
        first = os.urandom(2 * PART + 1)
        objects.put_file("big/2", _file(tmp_path, first, "a"))
        objects.put_file("big/2", _file(tmp_path, os.urandom(2 * PART + 1), "b"))
        with objects.open("big/2") as f:
            assert f.read() == first

    def test_delete_is_idempotent(self, objects: ObjectStore, tmp_path: Path) -> None:
        objects.put_file("k/1", _file(tmp_path, b"x"))
        objects.delete("k/1")
        objects.delete("k/1")
        assert not objects.exists("k/1")

    def test_keys_by_prefix(self, objects: ObjectStore, tmp_path: Path) -> None:
        for i, key in enumerate(["p/a", "p/b", "q/c"]):
            objects.put_file(key, _file(tmp_path, b"x", f"f{i}"))
        assert list(objects.keys("p/")) == ["p/a", "p/b"]
        assert list(objects.keys("p/a")) == ["p/a"]
        assert list(objects.keys("q")) == ["q/c"]
        assert list(objects.keys("nothing/")) == []
        assert set(objects.keys()) == {"p/a", "p/b", "q/c"}

    def test_source_is_consumed(self, objects: ObjectStore, tmp_path: Path) -> None:
        src = _file(tmp_path, b"x")
        objects.put_file("k/1", src)
        assert not src.exists()


class TestBlobStore:
    def test_key_is_sha256_of_content(self, blobs: BlobStore) -> None:
        ref = blobs.put_bytes(b"nimbus")
        digest = hashlib.sha256(b"nimbus").hexdigest()
        assert ref.key == f"sha256/{digest[:2]}/{digest}"
        assert ref.size == 6
        assert blobs.read_bytes(ref.key) == b"nimbus"

    def test_identical_content_stored_once(self, blobs: BlobStore, tmp_path: Path) -> None:
        a = blobs.put_bytes(b"same")
        b = blobs.put_file(_file(tmp_path, b"same"))
        assert a == b
        assert list(blobs.objects.keys("sha256/")) == [a.key]

    def test_streaming_writer(self, blobs: BlobStore) -> None:
        with blobs.writer() as w:
            for _ in range(10):
                w.write(b"x" * 100_000)
            ref = w.commit()
        assert ref.size == 1_000_000
        assert ref.sha256 == hashlib.sha256(b"x" * 1_000_000).hexdigest()

    def test_aborted_writer_leaves_nothing(self, blobs: BlobStore) -> None:
        with blobs.writer() as w:
            w.write(b"partial")
            staged = w.path
        assert not staged.exists()
        assert list(blobs.objects.keys("sha256/")) == []

    def test_flipped_byte_is_detected_never_served(
        self, blobs: BlobStore, objects: ObjectStore, request: pytest.FixtureRequest
    ) -> None:
        ref = blobs.put_bytes(b"a" * 5000)
        _flip_byte(request, objects, ref.key, 1234)
        with pytest.raises(CorruptBlob):
            blobs.read_bytes(ref.key)
        with pytest.raises(CorruptBlob):
            blobs.verify(ref.key)
        with pytest.raises(CorruptBlob):
            blobs.local_path(ref.key, cache_dir=blobs.staging_dir / "cache")

    def test_missing_and_malformed_keys(self, blobs: BlobStore) -> None:
        with pytest.raises(NotFound):
            blobs.read_bytes("sha256/00/" + "0" * 64)
        with pytest.raises(NotFound):
            blobs.read_bytes("../../etc/passwd")

    def test_local_path_for_mmap(self, blobs: BlobStore, tmp_path: Path) -> None:
        ref = blobs.put_bytes(b"array bytes")
        path = blobs.local_path(ref.key, cache_dir=tmp_path / "cache")
        assert path.read_bytes() == b"array bytes"


def test_local_store_refuses_escaping_keys(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "root")
    for key in ["../x", "/abs", "a/../../b", "", ".tmp/x"]:
        with pytest.raises(ValueError):
            store.exists(key)


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "root")
    blobs = BlobStore(objects, tmp_path / "unused")
    blobs.put_file(_file(tmp_path, b"abc" * 1000))
    assert list((tmp_path / "root" / ".tmp").iterdir()) == []


def test_unknown_scheme_is_refused() -> None:
    from nimbus.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unsupported storage URL scheme"):
        open_object_store("ftp://x")
