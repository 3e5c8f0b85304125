"""The SDK's models and deployments methods against in-memory transports: reference
parsing, paths and bodies, the wire models they return, errors rebuilt, and calls to a
deployment's endpoint."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.client import Client, DeploymentFailed, ModelRef
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NotFound, Unavailable
from nimbus.wire.base import dump
from nimbus.wire.deployments import Deployment, Replica
from nimbus.wire.models import AliasChange, AliasEvent, Model, ModelSummary, ModelVersion

URL = "http://nimbus.test"
ENDPOINT = "http://127.0.0.1:7001"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in ("NIMBUS_URL", "NIMBUS_TOKEN", "NIMBUS_HOME"):
        monkeypatch.delenv(key, raising=False)
    return Settings(home=tmp_path / "home")


def make(handler: Handler, settings: Settings) -> Client:
    return Client(URL, "nbt_secret", settings=settings, transport=httpx.MockTransport(handler))


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def version(number: int = 2, **extra: Any) -> dict[str, Any]:
    """A model version as the server sends it."""
    return {
        "model": "m",
        "version": number,
        "job": "job_1",
        "dataset": {"name": "digits", "version": 1, "content_hash": "c" * 64},
        "code_hash": None,
        "params": {"epochs": "3"},
        "seed": 0,
        "metrics": {"accuracy": 0.98},
        "spec": {"task": "image-classification"},
        "files": {},
        "aliases": [],
        "created_at": "2026-01-02T03:04:05.123456Z",
        "created_by": "tok_1",
        "lineage": "trained",
        **extra,
    }


def summary() -> dict[str, Any]:
    return {
        "name": "m",
        "latest_version": 2,
        "versions": 2,
        "aliases": {"production": 2},
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-03T03:04:05Z",
    }


def alias_change(version: int | None = 2) -> dict[str, Any]:
    return {"model": "m", "alias": "production", "version": version, "from_version": 1}


@pytest.mark.parametrize(
    ("text", "name", "version", "alias", "segment"),
    [
        ("digits", "digits", None, None, "latest"),
        ("digits:latest", "digits", "latest", None, "latest"),
        ("digits:3", "digits", 3, None, "3"),
        ("digits@production", "digits", None, "production", "@production"),
        ("my.model-2@canary_1", "my.model-2", None, "canary_1", "@canary_1"),
    ],
)
def test_model_refs_parse(
    text: str, name: str, version: object, alias: str | None, segment: str
) -> None:
    ref = ModelRef.parse(text)
    assert (ref.name, ref.version, ref.alias, ref.segment) == (name, version, alias, segment)
    assert str(ModelRef.parse(str(ref))) == str(ref)


@pytest.mark.parametrize(
    "text",
    [
        "Digits",
        "digits:0",
        "digits:x",
        "digits:-1",
        "digits@",
        "digits@12",
        "digits@latest",
        "digits@Prod",
        "@prod",
        ":1",
        "",
    ],
)
def test_bad_model_refs_are_refused_before_sending(text: str, settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(InvalidInput), make(handler, settings) as client:
        client.get_model_version(text)


def test_registry_paths_and_bodies(settings: Settings) -> None:
    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        assert request.headers["Authorization"] == "Bearer nbt_secret"
        if request.url.path == "/api/v1/models":
            return httpx.Response(200, json={"models": [summary()]})
        if request.url.path == "/api/v1/models/m":
            model = {"name": "m", "created_at": "2026-01-02T03:04:05Z", "versions": [version()]}
            return httpx.Response(200, json={**model, "aliases": {}, "alias_history": []})
        if "/aliases/" in request.url.path:
            return httpx.Response(200, json=alias_change())
        return httpx.Response(200, json=version())

    with make(handler, settings) as client:
        client.register_model("m", " job_1 ")
        assert [m.latest_version for m in client.list_models()] == [2]
        client.get_model("m")
        client.get_model_version("m")
        client.get_model_version("m:2")
        client.get_model_version("m@production")
        client.set_alias("m", "production", "2")
        client.delete_alias("m", "production")
        client.delete_model_version("m:2")
        client.delete_model_version(ModelRef("m", alias="old"))
    assert seen == [
        ("POST", "/api/v1/models/m/versions", {"job": "job_1"}),
        ("GET", "/api/v1/models", None),
        ("GET", "/api/v1/models/m", None),
        ("GET", "/api/v1/models/m/versions/latest", None),
        ("GET", "/api/v1/models/m/versions/2", None),
        ("GET", "/api/v1/models/m/versions/@production", None),
        ("PUT", "/api/v1/models/m/aliases/production", {"version": 2}),
        ("DELETE", "/api/v1/models/m/aliases/production", None),
        ("DELETE", "/api/v1/models/m/versions/2", None),
        ("DELETE", "/api/v1/models/m/versions/@old", None),
    ]


def test_registry_input_errors_and_server_errors(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return error(409, "conflict", "model m version 1 is deployed as shapes")
        return error(404, "not_found", "no model 'm'")

    with make(handler, settings) as client:
        with pytest.raises(InvalidInput, match="name the version"):
            client.delete_model_version("m")
        with pytest.raises(InvalidInput, match="job id"):
            client.register_model("m", "  ")
        with pytest.raises(InvalidInput, match="positive integer"):
            client.set_alias("m", "production", "two")
        with pytest.raises(InvalidInput, match="neither a number"):
            client.set_alias("m", "7", 1)
        with pytest.raises(NotFound, match="no model 'm'"):
            client.get_model("m")
        with pytest.raises(Conflict, match="deployed as shapes"):
            client.delete_model_version("m:1")


def test_download_writes_verified_files(settings: Settings, tmp_path: Path) -> None:
    import hashlib

    blobs = {"spec.json": b'{"task": "x"}', "model.onnx": b"onnx-bytes"}
    files = {
        name: {"key": f"sha256/xx/{hashlib.sha256(data).hexdigest()}", "size": len(data)}
        for name, data in blobs.items()
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models/m/versions/@production":
            return httpx.Response(200, json=version(3, files=files))
        prefix = "/api/v1/models/m/versions/3/files/"
        assert request.url.path.startswith(prefix)
        name = request.url.path[len(prefix) :]
        if name.endswith("/link"):  # a server from before direct transfers: stream it
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
        return httpx.Response(200, content=blobs[name] if name != "model.onnx" else b"tampered")

    with make(handler, settings) as client:
        with pytest.raises(Exception, match="does not match its hash"):
            client.download_model("m@production", tmp_path / "out")
        blobs["model.onnx"] = b"tampered"
        files["model.onnx"] = {
            "key": f"sha256/xx/{hashlib.sha256(b'tampered').hexdigest()}",
            "size": 8,
        }
        paths = client.download_model("m@production", tmp_path / "out")
    assert [p.name for p in paths] == ["spec.json", "model.onnx", "version.json"]
    assert (tmp_path / "out" / "spec.json").read_bytes() == blobs["spec.json"]
    assert json.loads((tmp_path / "out" / "version.json").read_text()) == version(3, files=files)


def test_registry_methods_return_wire_models(settings: Settings) -> None:
    history = [
        {"alias": "production", "version": 2, "from_version": None, "at": "2026-01-02T03:04:05Z"},
    ]
    answers = {
        ("POST", "/api/v1/models/m/versions"): version(),
        ("GET", "/api/v1/models"): {"models": [summary()]},
        ("GET", "/api/v1/models/m"): {
            "name": "m",
            "created_at": "2026-01-02T03:04:05Z",
            "versions": [version(1), version(2, aliases=["production"])],
            "aliases": {"production": 2},
            "alias_history": [{**history[0], "by": "tok_1"}],
            "added_by_a_newer_server": True,
        },
        ("GET", "/api/v1/models/m/versions/2"): version(),
        ("PUT", "/api/v1/models/m/aliases/production"): alias_change(),
        ("DELETE", "/api/v1/models/m/aliases/production"): alias_change(None),
        ("DELETE", "/api/v1/models/m/versions/2"): version(),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[(request.method, request.url.path)])

    with make(handler, settings) as client:
        registered = client.register_model("m", "job_1")
        assert isinstance(registered, ModelVersion)
        assert registered.created_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        assert registered.dataset.content_hash == "c" * 64 and registered.seed == 0
        assert dump(registered) == version()  # written back exactly as the server sent it
        older = {k: v for k, v in version().items() if k != "lineage"}
        assert ModelVersion.model_validate(older).lineage == "trained"  # a server before it
        [listed] = client.list_models()
        assert isinstance(listed, ModelSummary) and listed.aliases == {"production": 2}
        model = client.get_model("m")
        assert isinstance(model, Model) and [v.version for v in model.versions] == [1, 2]
        assert all(isinstance(v, ModelVersion) for v in model.versions)
        assert isinstance(model.alias_history[0], AliasEvent) and model.alias_history[0].by
        assert "added_by_a_newer_server" not in dump(model)
        assert isinstance(client.get_model_version("m:2"), ModelVersion)
        moved = client.set_alias("m", "production", 2)
        assert isinstance(moved, AliasChange) and (moved.version, moved.from_version) == (2, 1)
        assert client.delete_alias("m", "production").version is None
        assert isinstance(client.delete_model_version("m:2"), ModelVersion)


def test_options_are_keyword_only() -> None:
    """After the first one or two parameters, SDK options are named, as in httpx."""
    positional = {
        "download_model": ["ref", "dir"],
        "create_deployment": ["name", "model"],
        "update_deployment": ["name", "model"],
        "wait_deployment": ["name"],
        "predict": ["deployment", "file"],
        "infer": ["deployment", "x"],
    }
    for method, names in positional.items():
        parameters = list(inspect.signature(getattr(Client, method)).parameters.values())[1:]
        allowed = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert allowed == names, method
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters[len(names) :]), method


def replica(state: str = "ready", model_version: int | str = 1) -> dict[str, object]:
    return {
        "index": 0,
        "pid": 4242,
        "port": 7101,
        "state": state,
        "restarts": 0,
        "model_version": model_version,
    }


def deployment(state: str = "ready", **extra: object) -> dict[str, object]:
    """A deployment as the server sends it."""
    return {
        "name": "shapes",
        "model": "m",
        "model_version": 1,
        "model_ref": "m@production",
        "state": state,
        "replicas": [replica()],
        "desired_replicas": 1,
        "endpoint": ENDPOINT,
        "max_batch_size": 32,
        "max_delay_ms": 2.0,
        "runtime": "onnx",
        "public": False,
        "owner": "node-a",
        "previous_model_ref": None,
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-02T03:04:06.5Z",
        "max_batch_rows": None,
        "max_tensor_elements": None,
        **extra,
    }


def test_deployment_paths_and_bodies(settings: Settings) -> None:
    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.url.path == "/api/v1/deployments" and request.method == "GET":
            return httpx.Response(200, json={"deployments": [deployment()]})
        return httpx.Response(200, json=deployment())

    with make(handler, settings) as client:
        client.create_deployment("shapes", "m@production")
        client.create_deployment(
            "big",
            "m:2",
            replicas=3,
            max_batch_size=16,
            max_delay_ms=1.5,
            runtime="torch",
            public=True,
            max_batch_rows=4,
            max_tensor_elements=1000,
        )
        assert client.list_deployments()[0].name == "shapes"
        client.get_deployment("shapes")
        client.update_deployment("shapes", "m:2")
        client.update_deployment("shapes", replicas=2)
        client.delete_deployment("shapes")
        with pytest.raises(InvalidInput, match="nothing to update"):
            client.update_deployment("shapes")
        with pytest.raises(InvalidInput, match="runtime"):
            client.create_deployment("x", "m:1", runtime="tensorrt")
        with pytest.raises(InvalidInput, match="replicas"):
            client.create_deployment("x", "m:1", replicas=0)
        with pytest.raises(InvalidInput, match="model reference"):
            client.create_deployment("x", "m:one")
    assert seen == [
        ("POST", "/api/v1/deployments", {"name": "shapes", "model": "m@production"}),
        (
            "POST",
            "/api/v1/deployments",
            {
                "name": "big",
                "model": "m:2",
                "replicas": 3,
                "max_batch_size": 16,
                "max_delay_ms": 1.5,
                "runtime": "torch",
                "public": True,
                "max_batch_rows": 4,
                "max_tensor_elements": 1000,
            },
        ),
        ("GET", "/api/v1/deployments", None),
        ("GET", "/api/v1/deployments/shapes", None),
        ("PATCH", "/api/v1/deployments/shapes", {"model": "m:2"}),
        ("PATCH", "/api/v1/deployments/shapes", {"replicas": 2}),
        ("DELETE", "/api/v1/deployments/shapes", None),
    ]


def test_wait_deployment_until_ready_or_failed(settings: Settings) -> None:
    states = iter([deployment("pending", replicas=[]), deployment(), deployment("failed")])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(states))

    with make(handler, settings) as client:
        client._poll_sleep = lambda seconds: None
        assert client.wait_deployment("shapes").state == "ready"
        with pytest.raises(DeploymentFailed, match="failed"):
            client.wait_deployment("shapes")


def test_wait_deployment_waits_for_every_replica_on_the_version(settings: Settings) -> None:
    states = iter(
        [
            deployment(desired_replicas=2),  # one of two replicas
            deployment(replicas=[replica(model_version=1), replica(model_version=2)]),
            deployment(replicas=[replica("starting", 2)]),
            deployment(replicas=[replica(model_version=2)]),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(states))

    with make(handler, settings) as client:
        client._poll_sleep = lambda seconds: None
        ready = client.wait_deployment("shapes", version=2)
    assert [r.model_version for r in ready.replicas] == [2]
    assert next(states, None) is None  # it took all four answers


def test_deployment_methods_return_wire_models(settings: Settings) -> None:
    stopped = deployment("stopped", replicas=[], endpoint=None)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(200, json=stopped)
        if request.url.path.endswith("/rollback"):
            assert request.method == "POST"
            return httpx.Response(200, json=deployment(previous_model_ref="m:2"))
        if request.method == "GET" and request.url.path == "/api/v1/deployments":
            return httpx.Response(200, json={"deployments": [deployment()]})
        return httpx.Response(200, json=deployment())

    with make(handler, settings) as client:
        created = client.create_deployment("shapes", "m@production")
        assert isinstance(created, Deployment) and isinstance(created.replicas[0], Replica)
        assert created.updated_at == datetime(2026, 1, 2, 3, 4, 6, 500000, tzinfo=UTC)
        assert dump(created) == {**deployment(), "updated_at": "2026-01-02T03:04:06.500000Z"}
        assert all(isinstance(d, Deployment) for d in client.list_deployments())
        assert client.get_deployment("shapes").replicas[0].pid == 4242
        assert isinstance(client.update_deployment("shapes", replicas=2), Deployment)
        assert client.rollback_deployment("shapes").previous_model_ref == "m:2"
        gone = client.delete_deployment("shapes")
        assert (gone.state, gone.endpoint, gone.replicas) == ("stopped", None, [])


def test_predict_and_infer_call_the_endpoint_with_the_token(
    settings: Settings, tmp_path: Path
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "nimbus.test":
            return httpx.Response(200, json=deployment())
        assert str(request.url).startswith(f"{ENDPOINT}/v2/models/shapes")
        assert request.headers["Authorization"] == "Bearer nbt_secret"
        if request.method == "GET":
            return httpx.Response(200, json={"inputs": [{"name": "pixels"}]})
        if request.url.path.endswith("/infer"):
            body = json.loads(request.content)["inputs"][0]
            assert (body["name"], body["datatype"], body["shape"]) == ("pixels", "UINT8", [2, 2])
            outputs = [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "data": [0.9, 0.1, 0.2, 0.8],
                },
                {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            ]
            return httpx.Response(200, json={"outputs": outputs})
        if request.content == b"{}":
            return httpx.Response(400, json={"error": "not an image"})  # the OIP shape
        return httpx.Response(200, json={"label": "a", "probabilities": {"a": 0.9, "b": 0.1}})

    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG...")
    with make(handler, settings) as client:
        assert client.predict("shapes", file=image)["label"] == "a"
        assert client.predict("shapes", text="hello")["label"] == "a"
        outputs = client.infer("shapes", np.zeros((2, 2), dtype=np.uint8))
        assert outputs["probabilities"].shape == (2, 2)
        assert list(outputs["label"]) == ["a", "b"]
        with pytest.raises(InvalidInput, match="not an image"):
            client.predict("shapes", data=b"{}")
        with pytest.raises(InvalidInput, match="exactly one"):
            client.predict("shapes", file=image, text="x")
        with pytest.raises(InvalidInput, match="no such file"):
            client.predict("shapes", file=tmp_path / "missing.png")
    posts = [r for r in seen if r.method == "POST"]
    assert posts[0].content == b"\x89PNG..." and posts[0].url.path.endswith("/predict")
    assert json.loads(posts[1].content) == {"text": "hello"}


def test_an_unreachable_endpoint_is_named(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "nimbus.test":
            return httpx.Response(200, json=deployment())
        raise httpx.ConnectError("refused", request=request)

    with make(handler, settings) as client, pytest.raises(Unavailable, match="deployment at"):
        client.predict("shapes", text="hi")
