"""Encryption at rest over real backends: the keyring in a real metadata store, the
encrypted object store over a local directory, memory and SeaweedFS, and the tenant-scoped
content addressing above it."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.db import tenants
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.errors import CorruptBlob, EncryptionKeyMismatch
from nimbus.services.keyring import (
    DbWrappedKeys,
    open_keyring,
    refuse_unencrypted,
    rotate_master_key,
)
from nimbus.storage import BlobStore, ObjectStore, open_object_store
from nimbus.storage.blobs import tenant_of
from nimbus.storage.encrypted import EncryptedObjectStore
from nimbus.storage.encryption import HEADER, SEGMENT
from nimbus.storage.keyring import Keyring, MasterKey
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore
from tests.helpers import migrated_sqlite
from tests.helpers_s3 import s3_client, s3_store

MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))
MARKER = b"the-marker-string-7f3a"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "nimbus.db"))
    yield database
    database.dispose()


@pytest.fixture
def tenant_ids(db: Database) -> tuple[int, int]:
    with db.session(write=True) as session:
        return tenants.get_or_create(session, "acme").id, tenants.get_or_create(session, "umbra").id


@pytest.fixture(params=["local", "memory", "seaweedfs"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_object_store(f"file://{tmp_path / 'objects'}")
    elif request.param == "memory":
        yield open_object_store("memory://")
    else:
        server = request.getfixturevalue("seaweedfs")
        bucket = server.ensure_bucket("encrypted")
        yield s3_store(server.endpoint, bucket, f"t-{uuid.uuid4().hex}")


def encrypted_blobs(inner: ObjectStore, db: Database, tmp_path: Path, master: bytes) -> BlobStore:
    staging = tmp_path / "staging"
    store = EncryptedObjectStore(inner, open_keyring(db, master), staging)
    return BlobStore(store, staging, tenant_scoped=True)


@pytest.fixture
def blobs(inner: ObjectStore, db: Database, tmp_path: Path) -> BlobStore:
    return encrypted_blobs(inner, db, tmp_path, MASTER)


def raw(inner: ObjectStore, key: str) -> bytes:
    with inner.open(key) as f:
        return f.read()


def test_blobs_are_stored_sealed_and_read_back_verified(
    blobs: BlobStore, inner: ObjectStore, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    data = MARKER * 200_000  # several segments
    ref = blobs.for_tenant(tenant_ids[0]).put_bytes(data)
    assert ref.key == f"tenants/{tenant_ids[0]}/sha256/{ref.sha256[:2]}/{ref.sha256}"
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    stored = raw(inner, ref.key)
    assert MARKER not in stored
    assert stored[:4] == b"NMBE" and len(stored) > len(data) + HEADER
    assert blobs.size(ref.key) == len(data)  # the plaintext's size
    assert blobs.read_bytes(ref.key) == data
    assert b"".join(blobs.iter_verified(ref.key)) == data
    # A file on disk would be ciphertext: callers get a decrypted, verified copy instead.
    assert blobs.objects.local_path(ref.key) is None
    copy = blobs.local_path(ref.key, tmp_path / "cache")
    assert copy.read_bytes() == data and tmp_path / "cache" in copy.parents


def test_identical_content_is_stored_once_per_tenant_never_across(
    blobs: BlobStore, inner: ObjectStore, tenant_ids: tuple[int, int]
) -> None:
    acme, umbra = (blobs.for_tenant(t) for t in tenant_ids)
    first = acme.put_bytes(MARKER)
    again = acme.put_bytes(MARKER)
    other = umbra.put_bytes(MARKER)
    assert first == again
    assert other.key != first.key and other.sha256 == first.sha256
    assert sorted(inner.keys()) == sorted([first.key, other.key])
    assert tenant_of(other.key) == tenant_ids[1]
    assert raw(inner, first.key)[5:13] != raw(inner, other.key)[5:13]  # two data keys
    assert blobs.read_bytes(other.key) == MARKER


def test_unscoped_writes_are_refused(blobs: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="for_tenant"):
        blobs.put_bytes(MARKER)
    source = tmp_path / "f"
    source.write_bytes(MARKER)
    with pytest.raises(ValueError, match="tenants' blobs only"):
        blobs.objects.put_file("sha256/00/" + "0" * 64, source)
    assert source.exists()


def test_a_flipped_byte_in_the_store_is_corrupt_blob(
    blobs: BlobStore,
    inner: ObjectStore,
    tenant_ids: tuple[int, int],
    request: pytest.FixtureRequest,
) -> None:
    ref = blobs.for_tenant(tenant_ids[0]).put_bytes(os.urandom(SEGMENT + 10))
    data = bytearray(raw(inner, ref.key))
    data[HEADER + SEGMENT + 20] ^= 0x01  # inside the second segment's ciphertext
    inner.delete(ref.key)
    damaged = Path(blobs.staging_dir) / "damaged"
    damaged.write_bytes(bytes(data))
    inner.put_file(ref.key, damaged)
    with pytest.raises(CorruptBlob, match="segment 1 failed authentication"):
        blobs.verify(ref.key)


def test_a_blob_moved_to_another_tenant_is_refused(
    blobs: BlobStore, inner: ObjectStore, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    acme, umbra = tenant_ids
    ref = blobs.for_tenant(acme).put_bytes(MARKER)
    blobs.for_tenant(umbra).put_bytes(b"umbra has a key too")
    moved = ref.key.replace(f"tenants/{acme}/", f"tenants/{umbra}/")
    copy = tmp_path / "copy"
    copy.write_bytes(raw(inner, ref.key))
    inner.put_file(moved, copy)
    with pytest.raises(CorruptBlob, match=f"tenant {acme}'s data key, not tenant {umbra}'s"):
        blobs.read_bytes(moved)


def test_a_truncated_object_is_repaired_on_the_next_store(
    blobs: BlobStore, inner: ObjectStore, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    data = os.urandom(3000)
    scoped = blobs.for_tenant(tenant_ids[0])
    ref = scoped.put_bytes(data)
    cut = tmp_path / "cut"
    cut.write_bytes(raw(inner, ref.key)[:-7])
    inner.delete(ref.key)
    inner.put_file(ref.key, cut)
    assert blobs.size(ref.key) == len(data) - 7  # a size some plaintext has: cut, not torn
    with pytest.raises(CorruptBlob):
        blobs.verify(ref.key)
    assert scoped.put_bytes(data) == ref  # the damaged copy is replaced, not kept
    assert blobs.read_bytes(ref.key) == data


def test_blobs_stored_before_encryption_stay_readable(
    inner: ObjectStore, db: Database, tmp_path: Path
) -> None:
    plain = BlobStore(inner, tmp_path / "staging")
    old = plain.put_bytes(b"stored before the key was set")
    blobs = encrypted_blobs(inner, db, tmp_path, MASTER)
    assert blobs.read_bytes(old.key) == b"stored before the key was set"
    assert blobs.size(old.key) == old.size


def test_the_keyring_keeps_one_wrapped_data_key_per_tenant(
    db: Database, tenant_ids: tuple[int, int]
) -> None:
    keyring = open_keyring(db, MASTER)
    first = keyring.for_tenant(tenant_ids[0])
    assert keyring.for_tenant(tenant_ids[0]) is first
    # Another process (its own keyring) finds the same key, by tenant and by id.
    other = open_keyring(db, MASTER)
    assert other.for_tenant(tenant_ids[0]).secret == first.secret
    assert other.by_id(bytes.fromhex(first.key_id)).secret == first.secret
    stored = DbWrappedKeys(db).get(first.key_id)
    assert stored is not None and first.secret not in stored.wrapped
    assert stored.master_key_id == MasterKey(MASTER).id
    assert "secret" not in repr(first) and first.secret.hex() not in repr(first)


def test_a_wrong_master_key_fails_closed(
    blobs: BlobStore, db: Database, tenant_ids: tuple[int, int], inner: ObjectStore, tmp_path: Path
) -> None:
    ref = blobs.for_tenant(tenant_ids[0]).put_bytes(MARKER)
    right, wrong = MasterKey(MASTER).id, MasterKey(OTHER).id
    with pytest.raises(EncryptionKeyMismatch) as raised:
        open_keyring(db, OTHER)
    assert raised.value.status == 503
    assert f"master key {wrong}" in raised.value.message
    assert f"wrapped under master key {right}" in raised.value.message
    # Past the start check (a key row changed behind the server's back): reads fail too.
    keyring = Keyring(MasterKey(OTHER), DbWrappedKeys(db))
    store = BlobStore(EncryptedObjectStore(inner, keyring, tmp_path / "s"), tmp_path / "s")
    with pytest.raises(EncryptionKeyMismatch, match=f"is key {wrong}"):
        store.read_bytes(ref.key)
    with pytest.raises(EncryptionKeyMismatch, match="NIMBUS_ENCRYPTION_KEY is not set"):
        refuse_unencrypted(db)


def test_a_blob_of_another_installation_names_its_unknown_key(
    blobs: BlobStore, inner: ObjectStore, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    ref = blobs.for_tenant(tenant_ids[0]).put_bytes(MARKER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other_db = Database(f"sqlite:///{elsewhere / 'nimbus.db'}")
    upgrade(other_db.engine)
    try:
        stranger = encrypted_blobs(inner, other_db, elsewhere, MASTER)
        with pytest.raises(EncryptionKeyMismatch, match="not in this server's keyring"):
            stranger.read_bytes(ref.key)
    finally:
        other_db.dispose()


def test_rotation_rewraps_keys_and_leaves_blobs_readable(
    blobs: BlobStore, inner: ObjectStore, db: Database, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    refs = [blobs.for_tenant(t).put_bytes(MARKER + bytes([t])) for t in tenant_ids]
    before = {key: raw(inner, key) for key in inner.keys("")}
    old_id, new_id, count = rotate_master_key(db, MASTER, OTHER)
    assert (old_id, new_id, count) == (MasterKey(MASTER).id, MasterKey(OTHER).id, 2)
    assert {key: raw(inner, key) for key in inner.keys("")} == before  # no blob rewritten
    assert rotate_master_key(db, MASTER, OTHER)[2] == 0  # a rerun changes nothing
    with pytest.raises(EncryptionKeyMismatch):
        open_keyring(db, MASTER)  # the old key is refused now
    rotated = encrypted_blobs(inner, db, tmp_path, OTHER)
    for ref, t in zip(refs, tenant_ids, strict=True):
        assert rotated.read_bytes(ref.key) == MARKER + bytes([t])
    # A keyring still running on the old key refuses to wrap a new tenant's key with it.
    with db.session(write=True) as session:
        third = tenants.get_or_create(session, "third").id
    with pytest.raises(EncryptionKeyMismatch):
        blobs.for_tenant(third).put_bytes(b"new tenant")
    # Rotating from a key the data is not under changes nothing and says why.
    with pytest.raises(EncryptionKeyMismatch):
        rotate_master_key(db, bytes(32), MASTER)
    assert DbWrappedKeys(db).master_key_ids() == {MasterKey(OTHER).id: 2}


def test_no_signing_capability_on_the_encrypted_store(blobs: BlobStore) -> None:
    """Direct transfers need a client that holds the key: the encrypted store offers the
    ObjectStore methods only, so no presigned URL can be made for its objects."""
    public = {name for name in dir(blobs.objects) if not name.startswith("_")}
    assert public == {
        "put_file",
        "open",
        "local_path",
        "exists",
        "size",
        "delete",
        "keys",
        "inner",
        "keyring",
        "master_key_id",
    }


def test_local_store_dir_holds_no_plaintext(
    db: Database, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    local = LocalObjectStore(tmp_path / "blobs")
    blobs = encrypted_blobs(local, db, tmp_path, MASTER)
    source = tmp_path / "big"
    source.write_bytes(MARKER * 300_000)
    blobs.for_tenant(tenant_ids[0]).put_file(source)
    assert source.exists()
    for path in (tmp_path / "blobs").rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path


def test_memory_store_round_trip_of_an_empty_blob(
    db: Database, tenant_ids: tuple[int, int]
) -> None:
    memory = MemoryObjectStore()
    blobs = encrypted_blobs(memory, db, Path(os.environ.get("TMPDIR", "/tmp")), MASTER)
    ref = blobs.for_tenant(tenant_ids[1]).put_bytes(b"")
    assert blobs.size(ref.key) == 0 and blobs.read_bytes(ref.key) == b""


def test_bucket_objects_listed_with_boto3_hold_no_plaintext(
    seaweedfs: object, db: Database, tenant_ids: tuple[int, int], tmp_path: Path
) -> None:
    endpoint = seaweedfs.endpoint  # type: ignore[attr-defined]
    bucket = seaweedfs.ensure_bucket("sealed")  # type: ignore[attr-defined]
    prefix = f"t-{uuid.uuid4().hex}"
    blobs = encrypted_blobs(s3_store(endpoint, bucket, prefix), db, tmp_path, MASTER)
    for t in tenant_ids:
        blobs.for_tenant(t).put_bytes(MARKER * 1000 + os.urandom(8))
    client = s3_client(endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    assert len(listed) == 2
    for item in listed:
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert MARKER not in body


def test_master_key_settings(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from nimbus.config import Settings
    from nimbus.errors import InvalidInput

    encoded = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31
    assert Settings(home=tmp_path).encryption_master_key() is None
    assert Settings(home=tmp_path, encryption_key=SecretStr(encoded)).encryption_master_key() == (
        MASTER
    )
    key_file = tmp_path / "master.key"
    key_file.write_text(encoded + "\n")
    assert Settings(home=tmp_path, encryption_key_file=key_file).encryption_master_key() == MASTER
    both = Settings(home=tmp_path, encryption_key=SecretStr(encoded), encryption_key_file=key_file)
    with pytest.raises(InvalidInput, match="not both"):
        both.encryption_master_key()
    with pytest.raises(InvalidInput, match="cannot be read"):
        Settings(home=tmp_path, encryption_key_file=tmp_path / "nope").encryption_master_key()
    with pytest.raises(InvalidInput, match="not base64"):
        Settings(home=tmp_path, encryption_key=SecretStr("%%%")).encryption_master_key()
    assert encoded not in repr(Settings(home=tmp_path, encryption_key=SecretStr(encoded)))
