"""The SDK against in-memory transports: URLs, errors, streaming, saved logins."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import nimbus.client
from nimbus.client import CHUNK_SIZE, Client, DatasetRef, load_login, save_login
from nimbus.client.transfer import Tally
from nimbus.config import Settings
from nimbus.errors import (
    Conflict,
    CorruptBlob,
    Forbidden,
    InvalidDataset,
    InvalidInput,
    NimbusError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from nimbus.security import Role
from nimbus.wire.audit import AuditEvent
from nimbus.wire.base import dump
from nimbus.wire.datasets import (
    Dataset,
    DatasetDeleted,
    DatasetSummary,
    DatasetVersion,
    Split,
    StoredFile,
)
from nimbus.wire.health import Health
from nimbus.wire.tokens import Identity, NewToken, Token

URL = "http://nimbus.test"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in ("NIMBUS_URL", "NIMBUS_TOKEN", "NIMBUS_HOME"):
        monkeypatch.delenv(key, raising=False)
    return Settings(home=tmp_path / "home")


def make(handler: Handler, settings: Settings, token: str | None = "nbt_secret") -> Client:
    return Client(URL, token, settings=settings, transport=httpx.MockTransport(handler))


def version_body(name: str = "digits", version: int = 1, **extra: Any) -> dict[str, Any]:
    """A dataset version as the server writes it (docs/api.md)."""
    return {
        "dataset": name,
        "version": version,
        "content_hash": "ab" * 32,
        "source_hash": "cd" * 32,
        "task": "image-classification",
        "format": "image-folder",
        "size_bytes": 9,
        "classes": ["0", "1"],
        "num_classes": 2,
        "splits": {"train": {"size": 2, "per_class": {"0": 1, "1": 1}}},
        "schema": {"shape": [8, 8, 1], "dtype": "uint8"},
        "stats": {},
        "split_source": "seeded",
        "files": {"source": {"key": "sha256/ab/" + "ab" * 32, "size": 9, "name": "digits.zip"}},
        "created_at": "2026-01-02T03:04:05.678901Z",
        "created_by": "tok_1",
        **extra,
    }


IDENTITY = {"token_id": "tok_1", "name": "ci", "role": "admin", "tenant": "default"}
AUDIT_EVENT = {
    "id": 7,
    "at": "2026-01-02T03:04:05.000001Z",
    "actor": None,
    "token_id": None,
    "action": "POST",
    "resource": "/api/v1/tokens",
    "status": 401,
    "detail": {"client": "127.0.0.1", "error": "unauthorized"},
}


def token_body(**extra: Any) -> dict[str, Any]:
    return {
        "id": "tok_1",
        "name": "ci",
        "role": "viewer",
        "tenant": "acme",
        "created_at": "2026-01-02T03:04:05Z",
        "expires_at": None,
        "revoked_at": None,
        **extra,
    }


def test_public_names_are_pinned() -> None:
    public = {name for name in dir(Client) if not name.startswith("_")}
    assert public == {
        "url",
        "close",
        "health",
        "whoami",
        "console_link",
        "create_token",
        "list_tokens",
        "revoke_token",
        "audit",
        "quotas",
        "set_quotas",
        "sweep_storage",
        "cluster_status",
        "upload_dataset",
        "list_datasets",
        "get_dataset",
        "get_version",
        "datasheet",
        "datasheet_markdown",
        "edit_datasheet",
        "download_dataset",
        "delete_dataset",
        "upload_code",
        "submit_job",
        "list_jobs",
        "get_job",
        "cancel_job",
        "job_logs",
        "iter_logs",
        "follow_logs",
        "job_metrics",
        "compare_jobs",
        "wait_job",
        "download_job_artifact",
        "register_model",
        "import_model",
        "model_card",
        "model_card_text",
        "edit_model_card",
        "list_models",
        "get_model",
        "get_model_version",
        "set_alias",
        "delete_alias",
        "download_model",
        "delete_model_version",
        "create_deployment",
        "list_deployments",
        "get_deployment",
        "update_deployment",
        "rollback_deployment",
        "delete_deployment",
        "wait_deployment",
        "predict",
        "explain",
        "infer",
        "derived_from",
        "purge_dataset_version",
        "start_study",
        "get_study",
        "list_studies",
        "study_trials",
        "study_importances",
        "cancel_study",
        "wait_study",
        "start_automl",
        "wait_automl_registration",
        "list_runs",
        "get_run",
        "compare_runs",
    }
    assert set(nimbus.client.__all__) == {
        "CHUNK_SIZE",
        "Client",
        "DatasetRef",
        "DeploymentFailed",
        "Event",
        "ModelRef",
        "Progress",
        "Role",
        "WaitTimeout",
        "load_login",
        "save_login",
    }


@pytest.mark.parametrize(
    ("text", "name", "version", "segment"),
    [
        ("digits", "digits", None, "latest"),
        ("digits:3", "digits", 3, "3"),
        ("my.data_set-2:12", "my.data_set-2", 12, "12"),
        ("digits:latest", "digits", "latest", "latest"),
    ],
)
def test_dataset_refs_parse(text: str, name: str, version: object, segment: str) -> None:
    ref = DatasetRef.parse(text)
    assert (ref.name, ref.version, ref.segment) == (name, version, segment)


@pytest.mark.parametrize("text", ["Digits", "digits:0", "digits:x", "digits:", ":1", "a:1:2", ""])
def test_bad_dataset_refs_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        DatasetRef.parse(text)


def test_requests_carry_the_token_and_hit_the_documented_paths(settings: Settings) -> None:
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.url.path.endswith("/datasets"):
            return httpx.Response(200, json={"datasets": []})
        if request.method == "DELETE" and request.url.path == "/api/v1/datasets/digits":
            return httpx.Response(200, json={"name": "digits", "deleted_versions": [1]})
        return httpx.Response(200, json=version_body())

    with make(handler, settings) as client:
        client.get_version("digits")
        client.get_version("digits:2")
        client.get_version(DatasetRef("digits", 5))
        client.delete_dataset("digits:2")
        client.delete_dataset("digits")
        assert client.list_datasets() == []
    assert [(m, p) for m, p, _ in seen] == [
        ("GET", "/api/v1/datasets/digits/versions/latest"),
        ("GET", "/api/v1/datasets/digits/versions/2"),
        ("GET", "/api/v1/datasets/digits/versions/5"),
        ("DELETE", "/api/v1/datasets/digits/versions/2"),
        ("DELETE", "/api/v1/datasets/digits"),
        ("GET", "/api/v1/datasets"),
    ]
    assert {auth for _, _, auth in seen} == {"Bearer nbt_secret"}


def test_dataset_calls_return_wire_models_that_dump_as_sent(settings: Settings) -> None:
    summary = {"name": "digits", "created_at": "2026-01-01T00:00:00Z", "latest_version": None}
    source_only = version_body(version=2)
    prepared: dict[str, Any] = {"key": "sha256/cd/" + "cd" * 32, "size": 4}  # no "name"
    with_prepared = version_body(files={**source_only["files"], "train_x.npy": prepared})

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/datasets":
            return httpx.Response(200, json={"datasets": [{**summary, "versions": 0}]})
        if path == "/api/v1/datasets/digits" and request.method == "GET":
            body = {**summary, "versions": [with_prepared, source_only]}
            return httpx.Response(
                200, json={k: v for k, v in body.items() if k != "latest_version"}
            )
        if path == "/api/v1/datasets/digits":
            return httpx.Response(200, json={"name": "digits", "deleted_versions": [1, 2]})
        return httpx.Response(200, json=with_prepared)

    with make(handler, settings) as client:
        [listed] = client.list_datasets()
        assert listed == DatasetSummary(
            name="digits",
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
            latest_version=None,
            versions=0,
        )
        dataset = client.get_dataset("digits")
        assert isinstance(dataset, Dataset) and [v.version for v in dataset.versions] == [1, 2]
        version = client.get_version("digits:1")
        assert version.task == "image-classification" and version.data_schema["dtype"] == "uint8"
        assert version.splits["train"] == Split(size=2, per_class={"0": 1, "1": 1})
        assert version.files["source"].name == "digits.zip"
        assert version.files["train_x.npy"] == StoredFile(key=prepared["key"], size=4)
        # --json prints dump(): the same fields, order and formats the server sent.
        assert json.dumps(dump(version)) == json.dumps(with_prepared)
        assert json.dumps(dump(dataset.versions[1])) == json.dumps(source_only)
        one = client.delete_dataset("digits:1")
        assert type(one) is DatasetVersion and one.version == 1
        assert client.delete_dataset("digits") == DatasetDeleted(
            name="digits", deleted_versions=[1, 2]
        )


def test_identity_is_a_wire_model(settings: Settings) -> None:
    handler: Handler = lambda r: httpx.Response(200, json=IDENTITY)  # noqa: E731
    with make(handler, settings) as client:
        who = client.whoami()
    assert who == Identity(token_id="tok_1", name="ci", role=Role.ADMIN, tenant="default")
    assert dump(who) == IDENTITY


def test_a_url_without_scheme_is_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInput, match="http://HOST:PORT"):
        Client("localhost:8600", "t", settings=settings)


def test_health_needs_no_token_and_tokens_api(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            assert "authorization" not in request.headers
            return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})
        if request.method == "POST":
            body = json.loads(request.content)
            assert body == {"name": "ci", "role": "viewer", "tenant": "acme"}
            return httpx.Response(201, json=token_body(token="nbt_x"))
        if request.url.path == "/api/v1/audit":
            assert request.url.params["limit"] == "5"
            return httpx.Response(200, json={"events": [AUDIT_EVENT]})
        if request.method == "DELETE":
            return httpx.Response(200, json=token_body(revoked_at="2026-01-03T00:00:00Z"))
        return httpx.Response(200, json={"tokens": [token_body()]})

    with make(handler, settings, token=None) as anonymous:
        assert anonymous.health() == Health(status="ok", version="0.1.0")
        with pytest.raises(Unauthorized, match="nimbus login"):
            anonymous.whoami()
    with make(handler, settings) as client:
        created = client.create_token("ci", role="viewer", tenant="acme")
        assert isinstance(created, NewToken) and created.token == "nbt_x"
        assert created.role is Role.VIEWER
        assert created.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        [listed] = client.list_tokens()
        assert type(listed) is Token and dump(listed) == token_body()
        revoked = client.revoke_token("tok_1")
        assert revoked.revoked_at == datetime(2026, 1, 3, tzinfo=UTC)
        [event] = client.audit(limit=5)
        assert isinstance(event, AuditEvent) and dump(event) == AUDIT_EVENT
        with pytest.raises(InvalidInput, match="role"):
            client.create_token("ci", role="root")
        with pytest.raises(InvalidInput, match="name"):
            client.create_token("")


@pytest.mark.parametrize(
    ("status", "code", "cls", "exit_code"),
    [
        (400, "invalid_input", InvalidInput, 2),
        (400, "invalid_dataset", InvalidDataset, 2),
        (401, "unauthorized", Unauthorized, 3),
        (403, "forbidden", Forbidden, 3),
        (404, "not_found", NotFound, 4),
        (409, "conflict", Conflict, 5),
        (413, "payload_too_large", PayloadTooLarge, 2),
    ],
)
def test_server_errors_are_rebuilt(
    settings: Settings, status: int, code: str, cls: type[NimbusError], exit_code: int
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": "nope: why"}})

    with make(handler, settings) as client, pytest.raises(cls) as caught:
        client.get_version("digits:1")
    assert type(caught.value) is cls
    assert caught.value.message == "nope: why"
    assert caught.value.exit_code == exit_code


def test_a_non_json_error_still_raises_a_nimbus_error(settings: Settings) -> None:
    handler: Handler = lambda r: httpx.Response(502, text="<html>bad gateway")  # noqa: E731
    with make(handler, settings) as client, pytest.raises(NimbusError, match="HTTP 502"):
        client.list_datasets()


@pytest.mark.parametrize(
    ("exc", "match"),
    [
        (
            httpx.ConnectError("refused"),
            r"cannot reach Nimbus at http://nimbus.test .*nimbus server",
        ),
        (httpx.ReadTimeout("slow"), "did not answer in time"),
    ],
)
def test_transport_failures_become_unavailable(
    settings: Settings, exc: Exception, match: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with make(handler, settings) as client, pytest.raises(Unavailable, match=match):
        client.whoami()


class RecordingTransport(httpx.BaseTransport):
    """Reads the request body chunk by chunk, as a server would, noting the progress so far."""

    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.calls = calls
        self.chunks: list[tuple[int, int]] = []  # (chunk size, progress calls before it)
        self.request: httpx.Request | None = None
        self.body = hashlib.sha256()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.request = request
        for chunk in request.stream:  # type: ignore[union-attr]
            self.chunks.append((len(chunk), len(self.calls)))
            self.body.update(chunk)
        return httpx.Response(201, json=version_body())


def test_upload_streams_the_file_in_chunks(settings: Settings, tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_SIZE * 5 // 2 // 256)
    path = tmp_path / "digits.zip"
    path.write_bytes(data)
    calls: list[tuple[int, int]] = []
    transport = RecordingTransport(calls)
    with Client(URL, "t", settings=settings, transport=transport) as client:
        version = client.upload_dataset(
            "digits",
            path,
            task="image-classification",
            seed=7,
            progress=lambda d, t: calls.append((d, t)),
        )
    assert isinstance(version, DatasetVersion) and version.version == 1
    request = transport.request
    assert request is not None
    assert request.url.path == "/api/v1/datasets/digits/versions"
    assert dict(request.url.params) == {
        "filename": "digits.zip",
        "task": "image-classification",
        "seed": "7",
    }
    assert request.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in request.headers
    # Three chunks of at most 1 MiB, each read while the previous ones were being reported.
    assert transport.chunks == [(CHUNK_SIZE, 0), (CHUNK_SIZE, 1), (len(data) - 2 * CHUNK_SIZE, 2)]
    assert transport.body.hexdigest() == hashlib.sha256(data).hexdigest()
    assert calls == [(CHUNK_SIZE, len(data)), (2 * CHUNK_SIZE, len(data)), (len(data), len(data))]


def test_upload_sends_the_image_size_and_fit(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "photos.zip"
    path.write_bytes(b"zip")
    for size in ((24, 32), "24x32"):
        transport = RecordingTransport([])
        with Client(URL, "t", settings=settings, transport=transport) as client:
            client.upload_dataset("photos", path, image_size=size, image_fit="pad")
        assert transport.request is not None
        assert dict(transport.request.url.params) == {
            "filename": "photos.zip",
            "image_size": "24x32",
            "image_fit": "pad",
        }


def test_upload_checks_its_arguments_before_sending(settings: Settings, tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with make(handler, settings) as client:
        with pytest.raises(InvalidInput, match="no such file"):
            client.upload_dataset("digits", tmp_path / "missing.zip")
        with pytest.raises(InvalidInput, match="dataset name"):
            client.upload_dataset("Bad Name", tmp_path)
        with pytest.raises(InvalidInput, match="format"):
            client.upload_dataset("digits", tmp_path, format="gif")


def test_a_directory_is_sent_as_a_reproducible_tar(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.png").write_bytes(b"one")
    (folder / "b.txt").write_bytes(b"two")
    (folder / "link").symlink_to("/etc/passwd")
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["filename"] == "mnist.tar"
        bodies.append(request.content)
        return httpx.Response(200, json=version_body())

    with make(handler, settings) as client:
        client.upload_dataset("mnist", folder)
        (folder / "b.txt").touch()  # a new mtime must not change the bytes
        client.upload_dataset("mnist", folder)
    assert bodies[0] == bodies[1]
    with tarfile.open(fileobj=io.BytesIO(bodies[0])) as tar:
        assert tar.getnames() == ["a", "a/1.png", "b.txt"]
        member = tar.extractfile("a/1.png")
        assert member is not None and member.read() == b"one"


def _files_server(blobs: dict[str, bytes], tamper: str | None = None) -> Handler:
    files = {
        name: {"key": f"sha256/{digest[:2]}/{digest}", "size": len(data)}
        for name, data in blobs.items()
        for digest in [hashlib.sha256(data).hexdigest()]
    }
    files["source"]["name"] = "digits.zip"
    body = version_body(version=3, files=files)

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/versions/latest"):
            return httpx.Response(200, json=body)
        if path.endswith("/link"):  # a local blob store: no direct transfers, stream it
            name = path.rsplit("/", 2)[1]
            sha256 = str(files[name]["key"]).rsplit("/", 1)[1]
            link = {"url": None, "size": files[name]["size"], "sha256": sha256, "name": name}
            return httpx.Response(200, json=link)
        name = path.rsplit("/", 1)[1]
        assert path == f"/api/v1/datasets/digits/versions/3/files/{name}"
        data = blobs[name]
        return httpx.Response(200, content=data[::-1] if name == tamper else data)

    return handler


def test_download_writes_verified_files(settings: Settings, tmp_path: Path) -> None:
    blobs = {"source": b"zip bytes", "train_x.npy": b"x" * (CHUNK_SIZE + 10)}
    progress: list[tuple[int, int]] = []
    with make(_files_server(blobs), settings) as client:
        paths = client.download_dataset(
            "digits", tmp_path / "out", progress=lambda d, t: progress.append((d, t))
        )
    assert [p.name for p in paths] == ["digits.zip", "train_x.npy", "version.json"]
    assert paths[0].read_bytes() == b"zip bytes"
    assert paths[1].read_bytes() == blobs["train_x.npy"]
    assert json.loads(paths[2].read_text())["version"] == 3
    total = sum(map(len, blobs.values()))
    assert progress[-1] == (total, total)


def test_files_downloaded_at_once_add_up_to_one_progress() -> None:
    seen: list[tuple[int, int]] = []
    tally = Tally(30, lambda done, total: seen.append((done, total)))
    first, second = tally.for_file(), tally.for_file()
    assert first is not None and second is not None
    first(5, 30)
    second(10, 30)
    first(20, 30)
    second(8, 30)  # a retried range took bytes back
    second(10, 30)
    assert seen == [(5, 30), (15, 30), (30, 30), (28, 30), (30, 30)]
    assert Tally(30, None).for_file() is None


def test_download_refuses_bytes_that_do_not_match_their_hash(
    settings: Settings, tmp_path: Path
) -> None:
    blobs = {"source": b"zip bytes", "train_x.npy": b"abc"}
    client = make(_files_server(blobs, tamper="train_x.npy"), settings)
    with client, pytest.raises(CorruptBlob, match=r"train_x\.npy"):
        client.download_dataset("digits", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digits.zip"]


def test_login_is_saved_privately_and_used_only_for_its_url(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_login(settings.home, URL, "nbt_saved")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_login(settings.home) == {"url": URL, "token": "nbt_saved"}
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=IDENTITY)

    transport = httpx.MockTransport(handler)
    with Client(settings=settings, transport=transport) as saved:
        assert saved.url == URL
        saved.whoami()
    assert seen == ["Bearer nbt_saved"]
    # Another server (from NIMBUS_URL) never receives the saved token.
    monkeypatch.setenv("NIMBUS_URL", "http://elsewhere.test")
    other = Client(settings=Settings(home=settings.home), transport=transport)
    assert other.url == "http://elsewhere.test"
    with pytest.raises(Unauthorized):
        other.whoami()
    # NIMBUS_TOKEN wins over the saved one.
    monkeypatch.setenv("NIMBUS_TOKEN", "nbt_env")
    with Client(settings=Settings(home=settings.home), transport=transport) as env:
        env.whoami()
    assert seen[-1] == "Bearer nbt_env"
