"""Attacks from a job on the Ray executor, on the real cluster, with the sandbox on (the
default): a job that holds only its member's job token tries to read Ray's session
directory, Ray's token (its file, the environment of Ray's processes), another running
attempt's files and token, to join the cluster with ``ray.init``, and to use a token found
in its inputs on the rest of the API. Every one must fail.
(Run unsandboxed, with NIMBUS_JOB_ISOLATION=none, every one of them succeeds.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nimbus.client import Client
from tests.e2e.conftest import logs_text, script
from tests.helpers import ServerProcess
from tests.helpers_ray import RayTestCluster, submit_once_placeable

VICTIM = """
import os, pathlib, time
token = os.environ["NIMBUS_JOB_TOKEN"]
pathlib.Path(os.environ["NIMBUS_JOB_DIR"], "secret.txt").write_text(token)
print("victim-token", token, flush=True)
time.sleep(120)
"""

# Reports what it could do; the test also looks for any stolen secret in its whole log.
THIEF = """
import json, os, pathlib, re, subprocess, sys
ours = os.environ["NIMBUS_JOB_TOKEN"]
found = {}
report = {"found": found}

def attempt(name, fn):
    try:
        value = fn()
    except OSError as exc:
        report[name] = type(exc).__name__
        return None
    report[name] = "allowed"
    return value

def keep(name, text):
    for key in ("RAY_AUTH_TOKEN", "NIMBUS_JOB_TOKEN"):
        for value in re.findall(key + "=([^\\\\x00\\\\n]+)", text):
            if value != ours:
                found.setdefault(key, value)

attempt("session_dir", lambda: os.listdir(SESSION_DIR))
ray_token = attempt("token_file", lambda: pathlib.Path(TOKEN_FILE).read_text())
keep("token_file", f"RAY_AUTH_TOKEN={ray_token or ''}")
victim_dir = pathlib.Path(VICTIM_JOB_DIR)
for path in attempt("victim_job_dir", lambda: list(victim_dir.rglob("secret.txt"))) or []:
    keep("victim_file", "NIMBUS_JOB_TOKEN=" + (attempt("victim_file", path.read_text) or ""))
environs = []
for pid in sorted({*RAY_PIDS, *(int(p) for p in os.listdir("/proc") if p.isdigit())}):
    if pid != os.getpid():
        text = attempt(f"environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
        if text is not None:
            environs.append(pid)
            keep("environ", text.decode(errors="replace"))
report["environ"] = environs
join = (
    "import ray; ray.init(address=ADDRESS, log_to_driver=False); "
    "print('RAY-JOINED', ray.get(ray.remote(lambda: 41).remote()) + 1)"
).replace("ADDRESS", repr(ADDRESS))
token = found.get("RAY_AUTH_TOKEN", "x" * 64)
env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
env["RAY_gcs_server_request_timeout_seconds"] = "2"  # fail soon: no GCS answers
try:
    done = subprocess.run(
        [sys.executable, "-c", join], env=env, capture_output=True, text=True, timeout=JOIN_SECONDS
    )
    report["ray_init"] = "joined" if "RAY-JOINED 42" in done.stdout else "refused"
    report["ray_init_said"] = (done.stdout + done.stderr).strip().splitlines()[-1:]
except subprocess.TimeoutExpired:
    report["ray_init"] = "timed out"
import httpx  # a token found in its inputs (here the admin's), used through its own job API
url = os.environ["NIMBUS_URL"]
transport = httpx.HTTPTransport(uds=url[len("unix:"):]) if url.startswith("unix:") else None
base = url if transport is None else "http://nimbus"
try:
    with httpx.Client(base_url=base, transport=transport) as api:
        listed = api.get("/api/v1/jobs", headers={"Authorization": f"Bearer {FOUND_TOKEN}"})
        report["api_with_found_token"] = listed.status_code
except httpx.HTTPError as exc:
    report["api_with_found_token"] = type(exc).__name__
print("thief-report", json.dumps(report), flush=True)
"""


def _thief(cluster: RayTestCluster, victim_job: str, token_file: Path, found: str) -> str:
    pids = sorted(pid for node in cluster.nodes.values() for pid in node.pids())
    values = {
        "SESSION_DIR": str(cluster.root / "ray"),
        "TOKEN_FILE": str(token_file),
        "VICTIM_JOB_DIR": str(cluster.jobs_dir / victim_job),
        "RAY_PIDS": pids,
        "ADDRESS": cluster.address,
        "JOIN_SECONDS": 20,
        "FOUND_TOKEN": found,
    }
    return "".join(f"{name} = {value!r}\n" for name, value in values.items()) + THIEF


def test_a_job_on_ray_cannot_reach_rays_secrets_other_attempts_or_the_cluster(
    ray_api: Client,
    ray_digits: str,
    ray_cluster_whole: RayTestCluster,
    ray_sandboxed: bool,
    ray_server: ServerProcess,
    tmp_path: Path,
) -> None:
    if not ray_sandboxed:
        pytest.skip("the sandbox needs root and bubblewrap")
    cluster = ray_cluster_whole
    token_file = cluster.root / "auth_token"  # where a node keeps it: the Ray user's, 0600
    token_file.write_text(cluster.token)
    token_file.chmod(0o600)
    victim = ray_api.submit_job(ray_digits, str(script(tmp_path, "victim", VICTIM)))
    deadline = time.monotonic() + 120
    while "victim-token" not in (text := logs_text(ray_api, victim.id)):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    victim_token = text.split("victim-token", 1)[1].split()[0]
    code = _thief(cluster, victim.id, token_file, ray_server.admin_token)
    thief = ray_api.submit_job(ray_digits, str(script(tmp_path, "thief", code)))
    thief = ray_api.wait_job(thief.id, timeout=120)
    ray_api.cancel_job(victim.id)
    said = logs_text(ray_api, thief.id)
    assert thief.state == "succeeded", said
    report = json.loads(said.split("thief-report", 1)[1].splitlines()[0])
    assert cluster.token not in said and victim_token not in said, report
    assert report["found"] == {}, report
    assert report["session_dir"] in ("FileNotFoundError", "PermissionError"), report
    assert report["token_file"] in ("FileNotFoundError", "PermissionError"), report
    assert "victim_file" not in report, report  # not in its view
    # Its own PID namespace: bwrap's init, the zygote, itself; no process of the host's.
    assert max(report["environ"], default=0) < 50, report
    assert report["ray_init"] in ("refused", "timed out"), report
    assert report["api_with_found_token"] == 404, report  # the relay passes the job API only


SEEN = """
import json, os
seen = {"uid": os.getuid(), "tmp": sorted(os.listdir("/tmp"))}
open("/tmp/left-behind", "w").write("x")
print("seen", json.dumps(seen), flush=True)
"""


def test_a_nodes_sandbox_serves_the_next_job_of_its_affinity_with_nothing_left(
    ray_api: Client, ray_digits: str, ray_sandboxed: bool, tmp_path: Path
) -> None:
    """Two runs of one script on one node, back to back: the second runs in the sandbox the
    first ended in (its uid: a fresh one would hold another), and finds nothing of it."""
    if not ray_sandboxed:
        pytest.skip("the sandbox needs root and bubblewrap")
    code = script(tmp_path, "seen", SEEN)
    seen = []
    for _ in range(2):
        job = submit_once_placeable(ray_api, ray_digits, str(code), resources={"node_a": 1})
        job = ray_api.wait_job(job.id, timeout=120)
        text = logs_text(ray_api, job.id)
        assert job.state == "succeeded", text
        seen.append(json.loads(text.split("seen ", 1)[1].splitlines()[0]))
    first, second = seen
    assert second["uid"] == first["uid"], seen
    assert "left-behind" not in first["tmp"] and "left-behind" not in second["tmp"], seen
