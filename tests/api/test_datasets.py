"""Dataset routes through a real server with the real ingest."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.api.conftest import API, blob_files, csv_bytes, error_of, stray_files
from tests.helpers import ServerProcess
from tests.helpers_photos import photo_members


@pytest.fixture(scope="module")
def member(shared_server: ServerProcess, token_for: Callable[..., str]) -> Iterator[httpx.Client]:
    with shared_server.client(token_for("member")) as client:
        yield client


def upload(client: httpx.Client, name: str, data: bytes, **params: str) -> httpx.Response:
    return client.post(
        f"{API}/datasets/{name}/versions",
        params={"filename": "reviews.csv", **params},
        content=data,
    )


def test_upload_read_download_delete(member: httpx.Client, shared_server: ServerProcess) -> None:
    data = csv_bytes("lifecycle")
    first = upload(member, "lifecycle", data)
    assert first.status_code == 201, first.text
    version = first.json()
    assert (version["dataset"], version["version"]) == ("lifecycle", 1)
    assert version["source_hash"] == hashlib.sha256(data).hexdigest()
    assert version["task"] == "text-classification" and version["format"] == "text-csv"
    assert version["classes"] == ["neg", "pos"] and version["num_classes"] == 2
    assert version["files"]["source"] == {
        "key": f"sha256/{version['source_hash'][:2]}/{version['source_hash']}",
        "size": len(data),
        "name": "reviews.csv",
    }
    assert {"train_x.npy", "train_y.npy", "test_x.npy"} <= set(version["files"])

    again = upload(member, "lifecycle", data)
    assert again.status_code == 200 and again.json() == version
    # Chunked, without Content-Length, and other options: a new version.
    second = member.post(
        f"{API}/datasets/lifecycle/versions",
        params={"filename": "reviews.csv", "seed": "5"},
        content=iter([data[:100], data[100:]]),
    )
    assert second.status_code == 201 and second.json()["version"] == 2

    created_at = member.get(f"{API}/datasets/lifecycle").json()["created_at"]
    assert member.get(f"{API}/datasets").json()["datasets"] == [
        {"name": "lifecycle", "created_at": created_at, "latest_version": 2, "versions": 2}
    ]
    assert [
        v["version"] for v in member.get(f"{API}/datasets/lifecycle/versions").json()["versions"]
    ] == [1, 2]
    assert member.get(f"{API}/datasets/lifecycle/versions/latest").json()["version"] == 2
    assert member.get(f"{API}/datasets/lifecycle/versions/1").json() == version

    source = member.get(f"{API}/datasets/lifecycle/versions/1/files/source")
    assert source.status_code == 200 and source.content == data
    assert "reviews.csv" in source.headers["content-disposition"]
    train = member.get(f"{API}/datasets/lifecycle/versions/1/files/train_x.npy")
    assert len(train.content) == version["files"]["train_x.npy"]["size"]
    assert train.content.startswith(b"\x93NUMPY")

    deleted = member.delete(f"{API}/datasets/lifecycle/versions/1")
    assert deleted.status_code == 200 and deleted.json() == version
    assert member.get(f"{API}/datasets/lifecycle/versions/1").status_code == 404
    gone = member.delete(f"{API}/datasets/lifecycle")
    assert gone.json() == {"name": "lifecycle", "deleted_versions": [2]}
    assert member.get(f"{API}/datasets/lifecycle").status_code == 404
    assert stray_files(shared_server.home) == []


@pytest.mark.parametrize(
    "raw_name", ["..%2Fx", "%2E%2E", "a%2Fb", "bad%00name", "n" * 300, "UPPER", "-x", "a%20b"]
)
def test_bad_names_are_4xx_json(member: httpx.Client, raw_name: str) -> None:
    for method, path in [
        ("POST", f"/datasets/{raw_name}/versions?filename=a.csv"),
        ("GET", f"/datasets/{raw_name}"),
        ("GET", f"/datasets/{raw_name}/versions/1"),
        ("DELETE", f"/datasets/{raw_name}"),
    ]:
        url = httpx.URL(str(member.base_url).rstrip("/") + API + path)
        response = member.request(method, url, content=b"x" if method == "POST" else None)
        assert response.status_code in (400, 404), (method, path, response.text)
        assert error_of(response)["code"] in ("invalid_input", "not_found")
        if "%2F" not in raw_name:  # a slash may simply not match any route
            assert response.status_code == 400, (method, path, response.text)
            assert "dataset name" in error_of(response)["message"]


def test_literal_slash_in_name_is_a_json_404(member: httpx.Client) -> None:
    for path in ("/datasets/a/b", "/datasets/a/b/versions", "/datasets/../x"):
        response = member.get(API + path)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_bad_query_parameters_are_named(member: httpx.Client) -> None:
    cases = [
        ({"task": "painting"}, "'task'"),
        ({"seed": "abc"}, "'seed'"),
        ({"format": "docx"}, "'format'"),
    ]
    for params, named in cases:
        response = upload(member, "params", csv_bytes(), **params)
        assert response.status_code == 400 and named in error_of(response)["message"]
    missing = member.post(f"{API}/datasets/params/versions", content=b"x")
    assert missing.status_code == 400 and "filename" in error_of(missing)["message"]
    for bad in ("../x.csv", "a/b.csv", ""):
        response = member.post(
            f"{API}/datasets/params/versions", params={"filename": bad}, content=b"x"
        )
        assert response.status_code == 400, bad
    assert member.get(f"{API}/datasets/params").status_code == 404


def test_bad_version_and_file(member: httpx.Client) -> None:
    assert upload(member, "versions", csv_bytes("versions")).status_code == 201
    for v, status in (("abc", 400), ("0", 400), ("-1", 400), ("7", 404)):
        response = member.get(f"{API}/datasets/versions/versions/{v}")
        assert response.status_code == status and error_of(response)
    missing = member.get(f"{API}/datasets/versions/versions/1/files/nope.npy")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"


def test_invalid_dataset_leaves_nothing(member: httpx.Client, shared_server: ServerProcess) -> None:
    before = blob_files(shared_server.home)
    response = upload(member, "broken", b"\x00\x01 not a csv at all", format="text-csv")
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_dataset"
    assert member.get(f"{API}/datasets/broken").status_code == 404
    assert blob_files(shared_server.home) == before
    assert stray_files(shared_server.home) == []


def test_unknown_routes_and_methods_are_json(member: httpx.Client) -> None:
    for method, path, status in [
        ("GET", "/api/v1/nothing", 404),
        ("POST", "/nothing", 404),
        ("PUT", "/api/v1/datasets", 405),
        ("PATCH", "/api/v1/whoami", 405),
    ]:
        response = member.request(method, path)
        assert response.status_code == status and error_of(response)


def test_corrupt_blob_is_an_error_not_bytes(
    member: httpx.Client, shared_server: ServerProcess
) -> None:
    data = csv_bytes("corrupt")
    version = upload(member, "corrupt", data).json()
    key = version["files"]["source"]["key"]
    path = shared_server.home / "blobs" / key
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    response = member.get(f"{API}/datasets/corrupt/versions/1/files/source")
    assert response.status_code == 500
    assert error_of(response)["code"] == "corrupt_blob"
    assert bytes(damaged) not in response.content


def test_photos_of_mixed_sizes_upload_to_the_size_asked_for(member: httpx.Client) -> None:
    members = photo_members(6)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    url = f"{API}/datasets/photos/versions"
    params = {"filename": "photos.zip"}
    default = member.post(url, params=params, content=buffer.getvalue())
    assert default.status_code == 201, default.text
    schema = default.json()["schema"]
    assert schema["transform"]["fit"] == "crop" and schema["shape"][2] == 3
    assert default.json()["stats"]["source_images"]["count"] == 12
    sized = member.post(
        url,
        params={**params, "image_size": "24x32", "image_fit": "pad"},
        content=buffer.getvalue(),
    )
    assert sized.status_code == 201, sized.text
    assert sized.json()["schema"]["shape"] == [24, 32, 3]
    assert sized.json()["schema"]["transform"]["fit"] == "pad"
    for bad, named in (("24by32", "image size"), ("2x2", "image size"), ("0", "image size")):
        response = member.post(url, params={**params, "image_size": bad}, content=b"x")
        assert response.status_code == 400 and named in error_of(response)["message"]
    response = member.post(url, params={**params, "image_fit": "stretch"}, content=b"x")
    assert response.status_code == 400 and "image fit" in error_of(response)["message"]
