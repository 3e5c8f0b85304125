"""Deployments through a real server and real replica processes: OIP v2 answers, tenant
tokens (kept fresh), public endpoints, a rolling update under load, a SIGKILLed replica, and
replicas that outlive a crashed or stopped control plane and are adopted by the next one."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.serving.fleet.sockets import port_in_use
from tests.api.conftest import API, error_of, make_token
from tests.helpers import ServerProcess
from tests.helpers_models import (
    API_ONLY,
    CLASSES,
    image_model_dir,
    images,
    insert_job,
    onnx_probabilities,
)
from tests.serving.helpers import Load, alive

Check = Callable[[dict[str, Any]], bool]


@dataclass
class Env:
    server: ServerProcess
    tokens: dict[str, str]  # member, viewer, acme (a member of another tenant)
    clients: dict[str, httpx.Client]
    v1: Path
    v2: Path

    @property
    def member(self) -> httpx.Client:
        return self.clients["member"]


def register(server: ServerProcess, client: httpx.Client, tenant: str, model_dir: Path) -> int:
    job = insert_job(server.home, tenant, model_dir)
    response = client.post(f"{API}/models/cnn/versions", json={"job": job})
    assert response.status_code == 201, response.text
    return int(response.json()["version"])


def deploy(client: httpx.Client, name: str, model: str = "cnn:1", **kw: Any) -> dict[str, Any]:
    response = client.post(f"{API}/deployments", json={"name": name, "model": model, **kw})
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for(client: httpx.Client, name: str, check: Check, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        shown = client.get(f"{API}/deployments/{name}").json()
        if check(shown):
            return dict(shown)
        assert time.monotonic() < deadline, f"timed out; last seen: {shown}"
        time.sleep(0.2)


def ready(version: int, replicas: int = 1) -> Check:
    def check(d: dict[str, Any]) -> bool:
        return (
            d.get("state") == "ready"
            and len(d["replicas"]) == replicas
            and all(r["state"] == "ready" and r["model_version"] == version for r in d["replicas"])
        )

    return check


def infer(endpoint: str, name: str, token: str | None, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "UINT8",
                "shape": list(x.shape),
                "data": x.reshape(-1).tolist(),
            }
        ]
    }
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{endpoint}/v2/models/{name}/infer", json=body, headers=headers, timeout=30)


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def delete_all(client: httpx.Client) -> None:
    for deployment in client.get(f"{API}/deployments").json().get("deployments", []):
        client.delete(f"{API}/deployments/{deployment['name']}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("deployments")
    server = ServerProcess(root / "home", env=API_ONLY).start()
    tokens = {
        "member": make_token(server, "member"),
        "viewer": make_token(server, "viewer"),
        "acme": make_token(server, "member", "acme"),
    }
    clients = {role: server.client(token) for role, token in tokens.items()}
    v1, v2 = image_model_dir(root / "v1", 1), image_model_dir(root / "v2", 2)
    try:
        assert register(server, clients["member"], "default", v1) == 1
        assert register(server, clients["member"], "default", v2) == 2
        yield Env(server, tokens, clients, v1, v2)
    finally:
        for role in ("member", "acme"):
            delete_all(clients[role])
        for client in clients.values():
            client.close()
        server.stop()


def test_deployment_answers_oip_v2_to_its_tenants_tokens(env: Env) -> None:
    created = deploy(env.member, "shapes", max_batch_size=8, max_delay_ms=1)
    assert created["model"] == "cnn" and created["model_version"] == 1
    assert created["model_ref"] == "cnn:1" and created["state"] in ("pending", "ready")
    assert created["max_batch_size"] == 8 and created["runtime"] == "onnx"
    assert created["endpoint"].startswith("http://127.0.0.1:") and not created["public"]
    shown = wait_for(env.member, "shapes", ready(1))
    endpoint = shown["endpoint"]
    assert shown["endpoint"] == created["endpoint"] and shown["replicas"][0]["pid"]

    x = images(3, seed=9)
    answer = infer(endpoint, "shapes", env.tokens["member"], x)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "shapes" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, 3)
    expected = onnx_probabilities(env.v1, x)
    assert np.allclose(probabilities, expected, atol=1e-5)
    assert outputs["label"]["data"] == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert infer(endpoint, "shapes", None, x).status_code == 401
    assert infer(endpoint, "shapes", env.tokens["acme"], x).status_code == 401
    assert infer(endpoint, "shapes", env.tokens["viewer"], x).status_code == 200

    fresh = make_token(env.server, "member")  # a token made after the deployment works
    eventually(lambda: infer(endpoint, "shapes", fresh, x).status_code == 200)
    with env.server.client() as admin:
        token_id = admin.get(f"{API}/whoami", headers={"Authorization": f"Bearer {fresh}"})
        admin.delete(f"{API}/tokens/{token_id.json()['token_id']}")
    eventually(lambda: infer(endpoint, "shapes", fresh, x).status_code == 401)

    in_use = env.member.delete(f"{API}/models/cnn/versions/1")
    assert in_use.status_code == 409 and "shapes" in error_of(in_use)["message"]
    opened = env.member.patch(f"{API}/deployments/shapes", json={"public": True})
    assert opened.status_code == 200 and opened.json()["public"]
    eventually(lambda: infer(endpoint, "shapes", None, x).status_code == 200, 60)

    gone = env.member.delete(f"{API}/deployments/shapes")
    assert gone.status_code == 200 and gone.json()["state"] == "stopped"
    assert env.member.get(f"{API}/deployments/shapes").status_code == 404
    assert not port_in_use("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))


def test_request_caps_set_over_rest_reach_the_replicas(env: Env) -> None:
    """max_batch_rows / max_tensor_elements: stored with the deployment, passed to its
    replicas, which answer 413 naming the cap; a PATCH changes them (a rolling update)."""
    created = deploy(env.member, "capped", max_batch_rows=2)
    assert created["max_batch_rows"] == 2 and created["max_tensor_elements"] is None
    endpoint = wait_for(env.member, "capped", ready(1))["endpoint"]
    token = env.tokens["member"]
    assert infer(endpoint, "capped", token, images(2)).status_code == 200
    refused = infer(endpoint, "capped", token, images(3))
    assert refused.status_code == 413 and "max_batch_rows" in refused.text, refused.text

    patched = env.member.patch(
        f"{API}/deployments/capped", json={"max_batch_rows": 8, "max_tensor_elements": 100}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["max_tensor_elements"] == 100
    listed = env.member.get(f"{API}/deployments").json()["deployments"]
    assert [(d["max_batch_rows"], d["max_tensor_elements"]) for d in listed] == [(8, 100)]

    def capped_by_elements() -> bool:
        answer = infer(endpoint, "capped", token, images(3))  # 3 rows: more than 100 elements
        return answer.status_code == 413 and "max_tensor_elements" in answer.text

    eventually(capped_by_elements, 60)
    bad = env.member.post(
        f"{API}/deployments", json={"name": "n", "model": "cnn:1", "max_batch_rows": 0}
    )
    assert bad.status_code == 400 and "max_batch_rows" in error_of(bad)["message"]
    assert env.member.delete(f"{API}/deployments/capped").status_code == 200


def test_names_tenants_roles_and_bad_requests(env: Env) -> None:
    deploy(env.member, "twin")
    acme = env.clients["acme"]
    assert acme.get(f"{API}/deployments/twin").status_code == 404
    assert acme.delete(f"{API}/deployments/twin").status_code == 404
    assert acme.post(f"{API}/deployments", json={"name": "x", "model": "cnn:1"}).status_code == 404
    register(env.server, acme, "acme", env.v2)  # acme's own cnn:1, deployed under the same name
    theirs = deploy(acme, "twin")
    assert [d["name"] for d in acme.get(f"{API}/deployments").json()["deployments"]] == ["twin"]
    ours = wait_for(env.member, "twin", ready(1))
    wait_for(acme, "twin", ready(1))
    assert ours["endpoint"] != theirs["endpoint"]
    x = images(1)
    assert infer(theirs["endpoint"], "twin", env.tokens["acme"], x).status_code == 200
    assert infer(theirs["endpoint"], "twin", env.tokens["member"], x).status_code == 401

    viewer = env.clients["viewer"]
    assert viewer.get(f"{API}/deployments/twin").status_code == 200
    refused = [
        viewer.post(f"{API}/deployments", json={"name": "v", "model": "cnn:1"}),
        viewer.patch(f"{API}/deployments/twin", json={"replicas": 2}),
        viewer.delete(f"{API}/deployments/twin"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    for body, status in (
        ({"name": "twin", "model": "cnn:1"}, 409),
        ({"name": "Bad", "model": "cnn:1"}, 400),
        ({"name": "n", "model": "cnn:9"}, 404),
        ({"name": "n", "model": "cnn@none"}, 404),
        ({"name": "n", "model": "cnn:x"}, 400),
        ({"name": "n", "model": "cnn:1", "replicas": 0}, 400),
        ({"name": "n", "model": "cnn:1", "runtime": "tf"}, 400),
        ({"name": "n", "model": "cnn:1", "colour": 1}, 400),
    ):
        assert env.member.post(f"{API}/deployments", json=body).status_code == status, body
    assert env.member.patch(f"{API}/deployments/nope", json={}).status_code == 404
    for client in (env.member, acme):
        assert client.delete(f"{API}/deployments/twin").status_code == 200


def test_rolling_update_under_load_then_a_killed_replica_comes_back(env: Env) -> None:
    env.member.put(f"{API}/models/cnn/aliases/production", json={"version": 1})
    deploy(env.member, "rolling", "cnn@production", replicas=2)
    before = wait_for(env.member, "rolling", ready(1, 2))
    old = [r["pid"] for r in before["replicas"]]
    with Load(before["endpoint"], "rolling", token=env.tokens["member"]) as load:
        time.sleep(0.5)
        moved = env.member.patch(f"{API}/deployments/rolling", json={"model": "cnn:2"})
        assert moved.status_code == 200, moved.text
        after = wait_for(env.member, "rolling", ready(2, 2), timeout=90)
        time.sleep(0.3)
    assert not load.failures, load.failures[:5]
    assert set(load.versions) == {"1", "2"} and load.versions[-1] == "2"
    assert after["model_version"] == 2 and after["model_ref"] == "cnn:2"
    assert after["endpoint"] == before["endpoint"] and after["desired_replicas"] == 2
    assert not set(old) & {r["pid"] for r in after["replicas"]}
    eventually(lambda: not any(alive(pid) for pid in old))

    victim = after["replicas"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    back = wait_for(
        env.member,
        "rolling",
        lambda d: ready(2, 2)(d) and victim not in {r["pid"] for r in d["replicas"]},
    )
    assert sorted(r["restarts"] for r in back["replicas"]) == [0, 1]
    scaled = env.member.patch(f"{API}/deployments/rolling", json={"replicas": 1})
    assert scaled.json()["desired_replicas"] == 1
    wait_for(env.member, "rolling", ready(2, 1))
    assert env.member.delete(f"{API}/deployments/rolling").status_code == 200


def test_replicas_outlive_the_control_plane_and_are_adopted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServerProcess(home, env=API_ONLY).start()
    pids: list[int] = []
    try:
        token = make_token(server, "member")
        with server.client(token) as client:
            register(server, client, "default", image_model_dir(tmp_path / "m", 1))
            deploy(client, "survivor")
            first = wait_for(client, "survivor", ready(1))
        pids = [r["pid"] for r in first["replicas"]]
        x = images(2)

        server.kill()  # SIGKILL: the control plane is gone, its replicas serve on
        assert all(alive(pid) for pid in pids)
        assert infer(first["endpoint"], "survivor", token, x).status_code == 200
        for how in ("crash", "graceful stop"):
            server = ServerProcess(home, env=API_ONLY, port=server.port).start()
            with server.client(token) as client:
                adopted = wait_for(client, "survivor", ready(1))
            assert adopted["endpoint"] == first["endpoint"], how
            assert [r["pid"] for r in adopted["replicas"]] == pids, how
            assert infer(first["endpoint"], "survivor", token, x).status_code == 200
            if how == "crash":
                server.stop()  # graceful: detaches, the replicas keep serving
                assert all(alive(pid) for pid in pids)
        with server.client(token) as client:
            assert client.delete(f"{API}/deployments/survivor").status_code == 200
        assert not any(alive(pid) for pid in pids)
        assert not port_in_use("127.0.0.1", int(first["endpoint"].rsplit(":", 1)[1]))
    finally:
        server.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
