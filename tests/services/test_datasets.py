"""DatasetService: upload, dedupe, failure leaves nothing behind, shared blobs, races."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from nimbus.datasets.domain import IngestOptions
from nimbus.db import datasets as dataset_repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import BlobRefRow, DatasetVersion
from nimbus.errors import CorruptBlob, Forbidden, InvalidDataset, InvalidInput, NotFound
from nimbus.security import Principal, Role
from nimbus.services import blobs as blobkeeping
from nimbus.services.datasets import DatasetService, content_hash, parse_version
from nimbus.services.tokens import TokenService
from nimbus.storage.blobs import BlobStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.wire.datasets import DatasetDeleted
from tests.services.conftest import fake_ingest

MakePrincipal = Callable[..., Principal]


def service(
    db: Database, blobs: BlobStore, tmp_path: Path, ingest: Any = fake_ingest
) -> DatasetService:
    return DatasetService(db, blobs, tmp_dir=tmp_path / "tmp", ingest_fn=ingest)


def staged(tmp_path: Path, data: bytes, name: str = "upload") -> tuple[Path, str]:
    """An upload as the route leaves it: a file and the SHA-256 computed while writing it."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    path = staging / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def upload(
    svc: DatasetService,
    who: Principal,
    tmp_path: Path,
    data: bytes,
    name: str = "reviews",
    options: IngestOptions | None = None,
) -> Any:
    path, digest = staged(tmp_path, data)
    return svc.upload(who, name, path, digest, "reviews.csv", options or IngestOptions())


def leftovers(tmp_path: Path) -> list[Path]:
    """Files left in the temp and staging directories."""
    return [p for d in ("tmp", "staging") for p in (tmp_path / d).rglob("*") if p.is_file()]


def count_rows(db: Database, table: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_upload_creates_version_and_stores_every_blob(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
) -> None:
    who = make_principal()
    result = upload(service(db, blobs, tmp_path), who, tmp_path, b"text,label\nhi,pos\n")
    version = result.version
    assert result.created
    assert version.dataset == "reviews" and version.version == 1
    assert version.content_hash == content_hash(version.source_hash, IngestOptions())
    assert version.files["source"].name == "reviews.csv"
    assert version.classes == ["neg", "pos"] and version.num_classes == 2
    assert version.created_by == who.token_id
    assert sorted(memory.keys()) == sorted(f.key for f in version.files.values())
    assert blobs.read_bytes(version.files["source"].key) == b"text,label\nhi,pos\n"
    assert leftovers(tmp_path) == []


def test_identical_upload_returns_existing_version(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    first = upload(svc, who, tmp_path, b"same bytes")
    keys = sorted(memory.keys())
    again = upload(svc, who, tmp_path, b"same bytes")
    assert not again.created and again.version == first.version
    other_options = upload(svc, who, tmp_path, b"same bytes", options=IngestOptions(seed=7))
    assert other_options.created and other_options.version.version == 2
    assert sorted(memory.keys()) == keys  # same source and same prepared bytes: no new blob
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ["ingest", "store", "commit"])
def test_failure_leaves_nothing_behind(
    stage: str,
    db: Database,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = make_principal()
    blobs = BlobStore(memory, tmp_path / "staging")
    svc = service(db, blobs, tmp_path)
    upload(svc, who, tmp_path, b"kept: an earlier version")
    before = sorted(memory.keys())
    if stage == "ingest":

        def failing(source: Path, *args: Any) -> Any:
            workdir = args[-1]
            (workdir / "half-written.npy").write_bytes(b"partial")
            raise InvalidDataset("no label column")

        svc.ingest_fn = failing
    elif stage == "store":
        calls = {"n": 0}
        real_put = memory.put_file

        def flaky_put(key: str, source: Path) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("disk full")
            real_put(key, source)

        monkeypatch.setattr(memory, "put_file", flaky_put)
    else:

        def broken_create(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("database went away")

        monkeypatch.setattr(dataset_repo, "create_version", broken_create)
    with pytest.raises((InvalidDataset, OSError, RuntimeError)):
        upload(svc, who, tmp_path, b"a brand new source")
    assert sorted(memory.keys()) == before
    assert count_rows(db, DatasetVersion) == 1
    assert count_rows(db, BlobRefRow) == 3  # the earlier version's, and no upload pin
    assert leftovers(tmp_path) == []


def test_failed_upload_never_deletes_blobs_of_other_versions(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    kept = upload(svc, who, tmp_path, b"shared source").version
    monkeypatch.setattr(dataset_repo, "create_version", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # same source and prepared blobs, other options
        upload(svc, who, tmp_path, b"shared source", options=IngestOptions(seed=3))
    for entry in kept.files.values():
        blobs.verify(entry.key)


def test_delete_version_keeps_blobs_still_referenced(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    v1 = upload(svc, who, tmp_path, b"one").version
    v2 = upload(svc, who, tmp_path, b"two").version
    shared = v1.files["train_y.npy"].key
    assert shared == v2.files["train_y.npy"].key
    deleted = svc.delete_version(who, "reviews", 1)
    assert deleted.version == 1
    assert shared in set(memory.keys())
    assert v1.files["source"].key not in set(memory.keys())
    with pytest.raises(NotFound):
        svc.get_version(who, "reviews", 1)
    assert svc.get_version(who, "reviews", None).version == 2
    assert upload(svc, who, tmp_path, b"three").version.version == 3  # never reused
    gone = svc.delete_dataset(who, "reviews")
    assert gone == DatasetDeleted(name="reviews", deleted_versions=[2, 3])
    assert list(memory.keys()) == []
    assert count_rows(db, BlobRefRow) == 0
    with pytest.raises(NotFound):
        svc.get_dataset(who, "reviews")


def test_blobs_shared_across_datasets_survive_deleting_one(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    a = upload(svc, who, tmp_path, b"same file", name="a").version
    upload(svc, who, tmp_path, b"same file", name="b")
    svc.delete_dataset(who, "a")
    for entry in a.files.values():
        blobs.verify(entry.key)


def test_tenants_and_roles(
    db: Database, blobs: BlobStore, tmp_path: Path, make_principal: MakePrincipal
) -> None:
    svc = service(db, blobs, tmp_path)
    alice = make_principal("acme")
    upload(svc, alice, tmp_path, b"acme data")
    bob = make_principal("globex")
    with pytest.raises(NotFound):
        svc.get_dataset(bob, "reviews")
    with pytest.raises(NotFound):
        svc.delete_dataset(bob, "reviews")
    assert svc.list_datasets(bob) == []
    viewer = make_principal("acme", Role.VIEWER)
    assert [d.name for d in svc.list_datasets(viewer)] == ["reviews"]
    with pytest.raises(Forbidden):
        upload(svc, viewer, tmp_path, b"nope")
    with pytest.raises(Forbidden):
        svc.delete_dataset(viewer, "reviews")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "x\x00", "A", "n" * 300, ""])
def test_bad_names_are_refused(
    name: str, db: Database, blobs: BlobStore, tmp_path: Path, make_principal: MakePrincipal
) -> None:
    svc = service(db, blobs, tmp_path)
    with pytest.raises(InvalidInput):
        upload(svc, make_principal(), tmp_path, b"data", name=name)
    assert leftovers(tmp_path) == []


def test_parse_version() -> None:
    assert parse_version("latest") is None
    assert parse_version("12") == 12
    for bad in ("0", "-1", "x", "1.5", "99999999999", ""):
        with pytest.raises(InvalidInput):
            parse_version(bad)


def test_corrupt_blob_is_never_handed_out(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
) -> None:
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    version = upload(svc, who, tmp_path, b"precious bytes").version
    download = svc.download(who, "reviews", 1, "source")
    assert (download.name, b"".join(download.chunks)) == ("reviews.csv", b"precious bytes")
    memory.corrupt(version.files["source"].key)
    with pytest.raises(CorruptBlob):
        svc.download(who, "reviews", None, "source")
    with pytest.raises(NotFound):
        svc.download(who, "reviews", 1, "nope.npy")


@pytest.mark.parametrize("moment", ["during-ingest", "while-storing"])
def test_deleting_a_version_that_shares_blobs_with_an_upload_in_progress(
    moment: str,
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another version holding the same blobs is deleted while an upload runs: before the
    upload pinned its prepared blobs (they are deleted, then stored again) or after (they
    are kept). Either way the new version's blobs all exist afterwards."""
    who = make_principal()
    svc = service(db, blobs, tmp_path)
    old = upload(svc, who, tmp_path, b"same source", name="old").version
    shared_prepared = old.files["train_y.npy"].key
    shared_source = old.files["source"].key

    def delete_old() -> None:
        svc.delete_dataset(who, "old")
        assert memory.exists(shared_source) == (moment == "while-storing")
        assert memory.exists(shared_prepared) == (moment == "while-storing")

    if moment == "during-ingest":

        def ingest_then_delete(*args: Any) -> Any:
            prepared = fake_ingest(*args)
            delete_old()
            return prepared

        svc.ingest_fn = ingest_then_delete
    else:
        real_move_in = blobkeeping.move_in
        once = threading.Lock()  # files are stored on several threads

        def delete_then_move(store: BlobStore, path: Path, sha: str, size: int) -> Any:
            if path.suffix == ".npy" and once.acquire(blocking=False):
                delete_old()  # every key is pinned by the time prepared files move in
            return real_move_in(store, path, sha, size)

        monkeypatch.setattr(blobkeeping, "move_in", delete_then_move)
    version = upload(svc, who, tmp_path, b"same source", name="new").version
    for entry in version.files.values():
        blobs.verify(entry.key)
    assert count_rows(db, BlobRefRow) == len({f.key for f in version.files.values()})


def test_concurrent_uploads(
    database_url: str,
    tmp_path: Path,
) -> None:
    """Threads upload to one dataset at once: identical content yields one version,
    different content distinct numbers; on both metadata stores."""
    db = Database(database_url)
    upgrade(db.engine)
    tokens = TokenService(db)
    operator = tokens.authenticate(tokens.ensure_bootstrap_admin() or "")
    memory = MemoryObjectStore()
    svc = service(db, BlobStore(memory, tmp_path / "staging"), tmp_path)
    contents = [b"same"] * 3 + [b"other-1", b"other-2", b"other-3"]
    results: list[Any] = [None] * len(contents)
    barrier = threading.Barrier(len(contents))

    def run(i: int) -> None:
        path, digest = staged(tmp_path, contents[i], name=f"u{i}")
        barrier.wait()
        results[i] = svc.upload(operator, "race", path, digest, "f.csv", IngestOptions())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same = {r.version.version for r in results[:3]}
    assert len(same) == 1 and sum(r.created for r in results[:3]) == 1
    numbers = sorted(r.version.version for r in results if r.created)
    assert numbers == [1, 2, 3, 4]
    assert sorted(v.version for v in svc.list_versions(operator, "race")) == numbers
    assert leftovers(tmp_path) == []
    db.dispose()


def test_digests_computed_by_ingest_are_used_and_the_rest_hashed(
    db: Database,
    blobs: BlobStore,
    memory: MemoryObjectStore,
    tmp_path: Path,
    make_principal: MakePrincipal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files the ingest hashed as it wrote them are not read again to be stored."""

    def ingest_with_digest(*args: Any) -> Any:
        prepared = fake_ingest(*args)
        data = prepared.files["train_x.npy"].read_bytes()
        prepared.digests = {"train_x.npy": hashlib.sha256(data).hexdigest()}
        return prepared

    hashed: list[str] = []
    real_hash_file = blobkeeping.hash_file

    def hash_file(path: Path) -> tuple[str, int]:
        hashed.append(path.name)
        return real_hash_file(path)

    monkeypatch.setattr(blobkeeping, "hash_file", hash_file)
    svc = service(db, blobs, tmp_path, ingest=ingest_with_digest)
    version = upload(svc, make_principal(), tmp_path, b"some text").version
    assert hashed == ["train_y.npy"]
    for name in ("train_x.npy", "train_y.npy"):
        assert blobs.read_bytes(version.files[name].key)  # verified against its key
    assert leftovers(tmp_path) == []
