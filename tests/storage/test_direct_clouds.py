"""The direct-transfers capability on Azure (Azurite) and GCS (fake-gcs-server): parts sent
through signed URLs to a staging object, listed, joined by the server, read back pinned to
the joined version, copied create-only and conditioned on that version; aborts leave
nothing. What each emulator checks of a URL's scope is tested where it checks it: Azurite
verifies SAS signatures, permissions and expiry; fake-gcs-server verifies no signature."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from nimbus.jobs import prefetch
from nimbus.storage.azure_direct import from_config
from nimbus.storage.blobs import BlobStore
from nimbus.storage.direct import (
    ObjectChanged,
    direct_transfers,
    part_count,
    part_length,
)
from tests.helpers_azure import ACCOUNT, KEY, Azurite, azure_store
from tests.helpers_gcs import FakeGCS, gcs_store

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture(params=["azurite", "fake_gcs"])
def store(request: pytest.FixtureRequest) -> Any:
    prefix = f"c{secrets.token_hex(4)}"
    if request.param == "azurite":
        azurite: Azurite = request.getfixturevalue("azurite")
        return azure_store(azurite.endpoint, azurite.ensure_container("direct"), prefix)
    fake_gcs: FakeGCS = request.getfixturevalue("fake_gcs")
    return gcs_store(fake_gcs, fake_gcs.ensure_bucket("direct"), prefix, signs=True)


def send(direct: Any, key: str, upload_id: str, data: bytes) -> None:
    numbers = range(1, part_count(len(data), PART) + 1)
    for number in reversed(numbers):  # any order
        lo = (number - 1) * PART
        length = part_length(len(data), PART, number)
        url = direct.part_url(key, upload_id, number, length, 60)
        response = httpx.put(url, content=data[lo : lo + length])
        assert response.status_code in (200, 201), response.text


def test_parts_are_staged_joined_read_back_and_copied_create_only(
    store: Any, tmp_path: Path
) -> None:
    direct = direct_transfers(store)
    assert direct is not None and direct.writes_at_key is False  # a URL can commit: staged
    data = os.urandom(12 * MIB + 3)
    key = "uploads/1/s/source"
    upload_id = direct.start_upload(key)
    send(direct, key, upload_id, data)
    parts = direct.parts(key, upload_id)
    assert [(p.number, p.size) for p in parts] == [(1, PART), (2, PART), (3, 2 * MIB + 3)]
    assert not store.exists(key)  # nothing is an object before the server joins it
    etag = direct.complete_upload(key, upload_id, parts)
    assert direct.stat(key) == (etag, len(data))
    assert [k for k in store.keys("uploads/")] == [key]  # the parts are gone
    digest = direct.download(key, tmp_path / "back", etag)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "back").read_bytes() == data

    link = direct.get_url(key, 60, "a b.tar")
    ranged = httpx.get(link, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]

    direct.copy(key, "sha256/ab/target", etag)
    assert store.size("sha256/ab/target") == len(data)
    direct.abort_upload(key, upload_id)
    assert list(store.keys("uploads/")) == []


def test_a_changed_staging_object_is_neither_read_nor_copied(store: Any, tmp_path: Path) -> None:
    direct = direct_transfers(store)
    assert direct is not None
    key = "uploads/1/t/source"
    upload_id = direct.start_upload(key)
    send(direct, key, upload_id, b"checked" * 1000)
    etag = direct.complete_upload(key, upload_id, direct.parts(key, upload_id))
    # Replaced behind the server's back, as a client holding a write URL could.
    second = direct.start_upload(key)
    send(direct, key, second, b"swapped" * 1000)
    direct.complete_upload(key, second, direct.parts(key, second))
    with pytest.raises(ObjectChanged):
        direct.download(key, tmp_path / "x", etag)
    with pytest.raises(ObjectChanged):
        direct.copy(key, "sha256/cd/target", etag)
    assert not store.exists("sha256/cd/target")
    with pytest.raises(ValueError):
        direct.abort_upload("sha256/cd/target", upload_id)  # never a blob's key
    direct.abort_upload(key, second)


def test_an_object_replaced_after_its_version_was_looked_up_is_not_read_as_it(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back's ranges are conditioned on the version looked up first: replaced in
    between (as a client holding a write URL could), the storage service refuses them and
    nothing of the new bytes is taken for the old."""
    direct = direct_transfers(store)
    assert direct is not None
    key = "uploads/1/r/source"
    upload_id = direct.start_upload(key)
    send(direct, key, upload_id, os.urandom(6 * MIB))
    etag = direct.complete_upload(key, upload_id, direct.parts(key, upload_id))
    looked_up = direct.stat(key)
    second = direct.start_upload(key)
    send(direct, key, second, os.urandom(6 * MIB))
    direct.complete_upload(key, second, direct.parts(key, second))
    monkeypatch.setattr(type(direct), "stat", lambda self, k: looked_up)  # the old version
    with pytest.raises(ObjectChanged):
        direct.download(key, tmp_path / "x", etag)


def test_an_abort_leaves_nothing_and_a_restart_ignores_older_parts(store: Any) -> None:
    direct = direct_transfers(store)
    assert direct is not None
    key = "uploads/2/s/source"
    first = direct.start_upload(key)
    send(direct, key, first, os.urandom(6 * MIB))
    second = direct.start_upload(key)
    assert direct.parts(key, second) == []  # another attempt's parts are not this one's
    direct.abort_upload(key, first)
    assert direct.parts(key, first) == [] and list(store.keys("uploads/")) == []


def test_azure_sas_urls_open_one_blob_for_one_kind_of_access(azurite: Azurite) -> None:
    store = azure_store(azurite.endpoint, azurite.ensure_container("direct"), "scope")
    direct = direct_transfers(store)
    assert direct is not None
    key = "uploads/3/s/source"
    upload_id = direct.start_upload(key)
    url = direct.part_url(key, upload_id, 1, 10, 60)
    assert "sp=w&" in url and "sr=b&" in url  # write only, one blob
    assert httpx.get(url.split("&comp=")[0]).status_code == 403  # no read
    assert httpx.delete(url.split("&comp=")[0]).status_code == 403  # no delete
    other = url.replace(quote("uploads/3/s/source"), quote("uploads/3/s/other"))
    assert httpx.put(other, content=b"x" * 10).status_code == 403  # no other blob
    assert httpx.put(url, content=b"x" * 10).status_code == 201
    etag = direct.complete_upload(key, upload_id, direct.parts(key, upload_id))
    link = direct.get_url(key, 60)
    assert httpx.put(link + "&comp=block&blockid=eA%3D%3D", content=b"y").status_code == 403
    assert httpx.get(link).content == b"x" * 10
    expired = direct.get_url(key, -60)  # signed to expire a minute ago
    assert httpx.get(expired).status_code == 403
    # Create-only at the target: an existing object is never replaced by a copy.
    direct.copy(key, "sha256/ef/target", etag)
    with pytest.raises(FileExistsError):
        direct.copy(key, "sha256/ef/target", etag)
    direct.abort_upload(key, upload_id)


def test_gcs_part_urls_are_v4_signed_for_one_object_and_length(fake_gcs: FakeGCS) -> None:
    store = gcs_store(fake_gcs, fake_gcs.ensure_bucket("direct"), "scope", signs=True)
    direct = direct_transfers(store)
    assert direct is not None
    url = direct.part_url("uploads/4/s/source", "0" * 16, 3, 1234, 60)
    assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url and "X-Goog-Expires=60" in url
    assert "uploads/4/s/source.parts/0000000000000000/000003?" in url
    assert "content-length" in url.split("X-Goog-SignedHeaders=")[1].split("&")[0]
    # Without a service-account key the store signs nothing: every byte streams.
    assert direct_transfers(gcs_store(fake_gcs, "direct", "scope")) is None


def test_a_node_fills_its_cache_from_signed_urls(store: Any, tmp_path: Path) -> None:
    """Jobs' inputs (datasets, checkpoints) come to a node the same way (nimbus.jobs.prefetch)."""
    blobs = BlobStore(store, tmp_path / "staging")
    ref = blobs.put_bytes(os.urandom(3 * MIB))
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    direct = direct_transfers(store)
    assert direct is not None
    claims = prefetch.claim(cache, {ref.key: ref.size})
    assert prefetch.fill(claims, lambda key: direct.get_url(key, 60)) == 1
    assert hashlib.sha256((cache / ref.key).read_bytes()).hexdigest() == ref.sha256


def test_azure_signs_only_with_an_account_key_and_for_the_public_endpoint() -> None:
    assert from_config("c", "p", {"account_name": "acct"}, None) is None
    assert from_config("c", "p", {"account_name": "acct", "sas_key": "sv=x"}, None) is None
    direct = from_config("c", "p", {"account_name": "acct", "account_key": KEY}, None)
    assert direct is not None
    assert direct.get_url("k", 60).startswith("https://acct.blob.core.windows.net/c/p/k?")
    public = from_config(
        "c", "p", {"account_name": "acct", "account_key": KEY}, "https://blobs.example.com/"
    )
    assert public is not None
    url = public.get_url("sha256/ab/x", 60, "my file.tar")
    assert url.startswith("https://blobs.example.com/c/p/sha256/ab/x?")
    assert "sp=r&" in url and "rscd=" in url  # read only, named for the download


def test_azure_reads_back_through_its_own_endpoint_not_the_public_one(
    azurite: Azurite, tmp_path: Path
) -> None:
    """Clients get links on the public endpoint; the control plane's read-back of what they
    uploaded goes to the service's own (here the public name resolves nowhere)."""
    config = {"account_name": ACCOUNT, "account_key": KEY, "endpoint": azurite.endpoint}
    nowhere = f"http://127.0.0.1:9/{ACCOUNT}"
    direct = from_config(azurite.ensure_container("direct"), "own", config, nowhere)
    assert direct is not None
    key = "uploads/6/s/source"
    upload_id = direct.start_upload(key)
    data = os.urandom(2 * MIB + 5)
    url = direct.part_url(key, upload_id, 1, len(data), 60)
    assert url.startswith(nowhere)
    response = httpx.put(url.replace(nowhere, azurite.endpoint), content=data)
    assert response.status_code == 201
    etag = direct.complete_upload(key, upload_id, direct.parts(key, upload_id))
    assert direct.download(key, tmp_path / "back", etag) == hashlib.sha256(data).hexdigest()


def test_gcs_joins_more_parts_than_one_compose_takes_in_a_tree(
    fake_gcs: FakeGCS, tmp_path: Path
) -> None:
    store = gcs_store(fake_gcs, fake_gcs.ensure_bucket("direct"), "tree", signs=True)
    direct = direct_transfers(store)
    assert direct is not None
    key, pieces = "uploads/5/s/source", [os.urandom(10) for _ in range(40)]  # 32 + 8
    upload_id = direct.start_upload(key)
    with httpx.Client() as http:
        for number, piece in enumerate(pieces, 1):
            url = direct.part_url(key, upload_id, number, len(piece), 60)
            assert http.put(url, content=piece).status_code == 200
    etag = direct.complete_upload(key, upload_id, direct.parts(key, upload_id))
    assert (
        direct.download(key, tmp_path / "joined", etag)
        == hashlib.sha256(b"".join(pieces)).hexdigest()
    )
    assert list(store.keys("uploads/")) == [key]  # parts and intermediate objects gone
    direct.abort_upload(key, upload_id)
