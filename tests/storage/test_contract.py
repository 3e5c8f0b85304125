"""One contract every object store backend passes, plus the content-addressing layer above."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.errors import CorruptBlob, NotFound
from nimbus.storage import BlobStore, ObjectStore, open_object_store
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore


@pytest.fixture(params=["local", "memory"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_object_store(f"file://{tmp_path / 'objects'}")
    else:
        yield open_object_store("memory://")


@pytest.fixture
def blobs(objects: ObjectStore, tmp_path: Path) -> BlobStore:
    return BlobStore(objects, tmp_path / "staging")


def _file(tmp_path: Path, data: bytes, name: str = "src") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


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

    def test_put_replaces_atomically(self, objects: ObjectStore, tmp_path: Path) -> None:
        objects.put_file("k/1", _file(tmp_path, b"one", "a"))
        objects.put_file("k/1", _file(tmp_path, b"two", "b"))
        with objects.open("k/1") as f:
            assert f.read() == b"two"

    def test_delete_is_idempotent(self, objects: ObjectStore, tmp_path: Path) -> None:
        objects.put_file("k/1", _file(tmp_path, b"x"))
        objects.delete("k/1")
        objects.delete("k/1")
        assert not objects.exists("k/1")

    def test_keys_by_prefix(self, objects: ObjectStore, tmp_path: Path) -> None:
        for i, key in enumerate(["p/a", "p/b", "q/c"]):
            objects.put_file(key, _file(tmp_path, b"x", f"f{i}"))
        assert list(objects.keys("p/")) == ["p/a", "p/b"]
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
        self, blobs: BlobStore, objects: ObjectStore
    ) -> None:
        ref = blobs.put_bytes(b"a" * 5000)
        if isinstance(objects, MemoryObjectStore):
            objects.corrupt(ref.key, 1234)
        else:
            assert isinstance(objects, LocalObjectStore)
            path = objects.local_path(ref.key)
            assert path is not None
            os.chmod(path, 0o644)
            data = bytearray(path.read_bytes())
            data[1234] ^= 0x01
            path.write_bytes(bytes(data))
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
