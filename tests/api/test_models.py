"""The model registry through a real server: register a succeeded job's model (checked),
list, show, versions by number, latest or alias, aliases and their history, verified
downloads, delete; tenants and roles."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.jobs.domain import JobState
from nimbus.modelformat.files import MODEL_FILES
from tests.api.conftest import API, error_of, make_token
from tests.helpers import ServerProcess
from tests.helpers_models import (
    API_ONLY,
    drop_job_artifacts,
    image_model_dir,
    insert_job,
    npz_dataset,
    onnx_probabilities,
)


@dataclass
class Env:
    server: ServerProcess
    member: httpx.Client
    viewer: httpx.Client
    other: httpx.Client  # a member of tenant "acme"
    v1: Path
    v2: Path

    def job(self, model_dir: Path | None, **kw: Any) -> str:
        return insert_job(self.server.home, "default", model_dir, **kw)

    def register(self, name: str, job: str, client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.member).post(f"{API}/models/{name}/versions", json={"job": job})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("models")
    server = ServerProcess(root / "home", env=API_ONLY).start()
    member, viewer, other = clients = [
        server.client(make_token(server, role, tenant))
        for role, tenant in (("member", None), ("viewer", None), ("member", "acme"))
    ]
    try:
        v1, v2 = image_model_dir(root / "v1", 1), image_model_dir(root / "v2", 2)
        yield Env(server, member, viewer, other, v1, v2)
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_register_show_list_get_and_download(env: Env) -> None:
    job = env.job(env.v1, evaluation={"accuracy": 0.75, "support": 8})
    response = env.register("digits", job)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["model"] == "digits" and version["version"] == 1 and version["job"] == job
    assert version["dataset"] == {"name": "digits", "version": 1, "content_hash": "c" * 64}
    assert version["params"] == {"epochs": 1} and version["seed"] == 7
    assert version["code_hash"] is None and version["aliases"] == []
    assert version["metrics"] == {"accuracy": 0.75, "support": 8}
    assert version["spec"]["classes"] == ["cat", "dog", "eel"]
    assert set(version["files"]) == set(MODEL_FILES)
    again = env.register("digits", job)  # the same job again: the same version
    assert again.status_code == 200 and again.json()["version"] == 1

    listed = env.member.get(f"{API}/models").json()["models"]
    assert [(m["name"], m["latest_version"], m["versions"]) for m in listed] == [("digits", 1, 1)]
    shown = env.member.get(f"{API}/models/digits").json()
    assert shown["name"] == "digits" and [v["version"] for v in shown["versions"]] == [1]
    for ref in ("1", "latest"):
        assert env.viewer.get(f"{API}/models/digits/versions/{ref}").json() == version
    for file in MODEL_FILES:
        got = env.viewer.get(f"{API}/models/digits/versions/1/files/{file}")
        assert got.status_code == 200 and got.content == (env.v1 / file).read_bytes()
        assert version["files"][file]["key"].endswith(hashlib.sha256(got.content).hexdigest())
    assert env.member.get(f"{API}/models/digits/versions/1/files/nope").status_code == 404
    for bad, status in (("0", 400), ("x", 400), ("9", 404), ("@nope", 404), ("@9", 400)):
        assert env.member.get(f"{API}/models/digits/versions/{bad}").status_code == status


def test_register_refuses_unfinished_modelless_and_unknown_jobs(env: Env) -> None:
    running = env.job(env.v1, state=JobState.RUNNING)
    assert env.register("other", running).status_code == 409
    failed = env.job(env.v1, state=JobState.FAILED)
    assert "failed" in error_of(env.register("other", failed))["message"]
    bare = env.job(None)
    response = env.register("other", bare)
    assert response.status_code == 400 and "model artifacts" in error_of(response)["message"]
    assert env.register("other", "job_nothing").status_code == 404
    assert env.register("Bad Name", bare).status_code == 400
    assert env.member.post(f"{API}/models/other/versions", json={}).status_code == 400
    acme_job = insert_job(env.server.home, "acme", env.v1)
    assert env.register("other", acme_job).status_code == 404  # another tenant's job
    assert env.member.get(f"{API}/models/other").status_code == 404  # nothing was created


def test_register_checks_the_model_files(env: Env, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in MODEL_FILES:
        (broken / file).write_bytes((env.v1 / file).read_bytes())
    (broken / "model.onnx").write_bytes((env.v1 / "model.onnx").read_bytes()[:-100])
    response = env.register("broken", env.job(broken))
    assert response.status_code == 400 and "model.onnx" in error_of(response)["message"]
    (broken / "model.onnx").write_bytes((env.v1 / "model.onnx").read_bytes())
    spec = json.loads((env.v1 / "spec.json").read_text())
    spec["classes"].append("fox")
    (broken / "spec.json").write_text(json.dumps(spec))
    response = env.register("broken", env.job(broken))
    assert response.status_code == 400 and "4 classes" in error_of(response)["message"]
    spec["outputs"][0]["shape"] = [-1, 4]
    (broken / "spec.json").write_text(json.dumps(spec))
    response = env.register("broken", env.job(broken))
    message = error_of(response)["message"]
    assert response.status_code == 400 and "model.onnx scores 3 classes" in message


def test_aliases_move_with_history_and_resolve(env: Env) -> None:
    first = env.register("aliased", env.job(env.v1)).json()
    second = env.register("aliased", env.job(env.v2)).json()
    assert (first["version"], second["version"]) == (1, 2)
    url = f"{API}/models/aliased/aliases"
    set1 = env.member.put(f"{url}/production", json={"version": 1})
    assert set1.status_code == 200, set1.text
    assert set1.json() == {
        "model": "aliased",
        "alias": "production",
        "version": 1,
        "from_version": None,
    }
    assert env.member.put(f"{url}/production", json={"version": 1}).status_code == 200
    moved = env.member.put(f"{url}/production", json={"version": 2}).json()
    assert moved["from_version"] == 1 and moved["version"] == 2
    env.member.put(f"{url}/staging", json={"version": 1})
    got = env.member.get(f"{API}/models/aliased/versions/@production").json()
    assert got["version"] == 2 and got["aliases"] == ["production"]
    shown = env.member.get(f"{API}/models/aliased").json()
    assert shown["aliases"] == {"production": 2, "staging": 1}
    history = [(e["alias"], e["version"], e["from_version"]) for e in shown["alias_history"]]
    assert history == [("production", 1, None), ("production", 2, 1), ("staging", 1, None)]
    assert all(e["at"].endswith("Z") and e["by"].startswith("tok_") for e in shown["alias_history"])
    listed = {m["name"]: m for m in env.member.get(f"{API}/models").json()["models"]}
    assert listed["aliased"]["aliases"] == {"production": 2, "staging": 1}
    for alias, body, status in (
        ("Bad!", {"version": 1}, 400),
        ("latest", {"version": 1}, 400),
        ("12", {"version": 1}, 400),
        ("x", {"version": 9}, 404),
        ("x", {"version": 0}, 400),
        ("x", {}, 400),
    ):
        assert env.member.put(f"{url}/{alias}", json=body).status_code == status, alias
    removed = env.member.delete(f"{url}/staging")
    assert removed.status_code == 200 and removed.json()["from_version"] == 1
    assert env.member.delete(f"{url}/staging").status_code == 404


def test_delete_version_drops_its_aliases_and_never_reuses_its_number(env: Env) -> None:
    for model_dir in (env.v1, env.v2):
        env.register("deleting", env.job(model_dir))
    env.member.put(f"{API}/models/deleting/aliases/production", json={"version": 2})
    deleted = env.member.delete(f"{API}/models/deleting/versions/@production")
    assert deleted.status_code == 200 and deleted.json()["version"] == 2
    shown = env.member.get(f"{API}/models/deleting").json()
    assert shown["aliases"] == {} and [v["version"] for v in shown["versions"]] == [1]
    assert shown["alias_history"][-1]["version"] is None
    assert shown["alias_history"][-1]["from_version"] == 2
    assert env.member.delete(f"{API}/models/deleting/versions/2").status_code == 404
    third = env.register("deleting", env.job(env.v2)).json()
    assert third["version"] == 3


def test_versions_outlive_their_job_and_take_their_blobs_when_deleted(env: Env) -> None:
    model_dir = image_model_dir(env.v1.parent / "v3", 3)  # content no other test registered
    job = env.job(model_dir)
    env.register("lonely", job)
    assert drop_job_artifacts(env.server.home, job) == []  # the version still holds them
    weights = env.member.get(f"{API}/models/lonely/versions/1/files/weights.safetensors")
    assert weights.content == (model_dir / "weights.safetensors").read_bytes()
    keys = env.member.get(f"{API}/models/lonely/versions/1").json()["files"]
    assert env.member.delete(f"{API}/models/lonely/versions/1").status_code == 200
    for file in ("weights.safetensors", "model.onnx"):  # spec.json is shared with others
        assert not (env.server.home / "blobs" / keys[file]["key"]).exists()
    assert (env.server.home / "blobs" / keys["spec.json"]["key"]).exists()


def test_tenants_are_isolated_and_viewers_read_only(env: Env) -> None:
    env.register("private", env.job(env.v1))
    assert env.other.get(f"{API}/models/private").status_code == 404
    assert env.other.get(f"{API}/models/private/versions/1").status_code == 404
    assert env.other.get(f"{API}/models/private/versions/1/files/spec.json").status_code == 404
    assert env.other.put(f"{API}/models/private/aliases/a", json={"version": 1}).status_code == 404
    assert env.other.delete(f"{API}/models/private/versions/1").status_code == 404
    assert "private" not in {m["name"] for m in env.other.get(f"{API}/models").json()["models"]}
    assert env.viewer.get(f"{API}/models/private").status_code == 200
    refused = [
        env.register("private", env.job(env.v2), env.viewer),
        env.viewer.put(f"{API}/models/private/aliases/a", json={"version": 1}),
        env.viewer.delete(f"{API}/models/private/versions/1"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert httpx.get(f"{env.server.url}{API}/models").status_code == 401
    with env.server.client() as admin:
        events = admin.get(f"{API}/audit", params={"limit": 50}).json()["events"]
    mine = [(e["action"], e["resource"], e["status"]) for e in events]
    assert ("DELETE", f"{API}/models/private/versions/1", 403) in mine
    assert ("POST", f"{API}/models/private/versions", 201) in mine


def test_register_rescores_built_in_models_on_their_test_split(env: Env) -> None:
    uploaded = env.member.post(
        f"{API}/datasets/shapes/versions", params={"filename": "s.npz"}, content=npz_dataset()
    )
    assert uploaded.status_code == 201, uploaded.text
    version = uploaded.json()
    x = np.load(
        io.BytesIO(env.member.get(f"{API}/datasets/shapes/versions/1/files/test_x.npy").content)
    )
    y = np.load(
        io.BytesIO(env.member.get(f"{API}/datasets/shapes/versions/1/files/test_y.npy").content)
    )
    assert len(y) >= 6  # a wrong accuracy then differs by more than the 2 rows allowed
    accuracy = float(np.mean(onnx_probabilities(env.v1, x).argmax(axis=1) == y))
    right = env.job(env.v1, dataset=version, evaluation={"accuracy": accuracy, "support": len(y)})
    assert env.register("rescored", right).status_code == 201
    wrong = 1.0 if accuracy < 0.5 else 0.0
    lying = env.job(env.v1, dataset=version, evaluation={"accuracy": wrong, "support": len(y)})
    response = env.register("rescored", lying)
    assert response.status_code == 400
    assert "do not belong together" in error_of(response)["message"]
