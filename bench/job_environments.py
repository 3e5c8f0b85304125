"""Submit -> first step of a job in a cached environment, next to the same job without one
(prints figures; not a test).

``python bench/job_environments.py [ROUNDS] [PAUSE]``, as root with bubblewrap: one real
server (sandboxed, the default executor: forkserver with 2 warm sandboxes, the default
scheduler tick). A first job builds the environment (``tomli==2.0.1``, from PyPI: the
build's time is printed); then each round submits one job without an environment and one
in the cached environment, interleaved, ``PAUSE`` seconds apart (a claimed warm sandbox's
replacement gets ready meanwhile). The figure is ``POST /jobs`` to the script's first line
(the runtime fetched its spec and the dataset before it), read from the line's own
``time.time()``; medians over the rounds, and their ratio.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import ServerProcess
from tests.api.conftest import API, csv_bytes, make_token

BASE = b"""\
import os, time
print("first", time.time(), "/.warm/" in os.getcwd(), flush=True)
"""
LAYERED = b"""\
import os, time
import tomli
print("first", time.time(), "/.warm/" in os.getcwd(), flush=True)
"""
REQUIREMENTS = {"requirements": ["tomli==2.0.1"]}


def _logs(client: httpx.Client, job_id: str) -> str:
    page = client.get(f"{API}/jobs/{job_id}/logs").json()
    return "".join(chunk["data"] for chunk in page["chunks"])


def _first_line(client: httpx.Client, body: dict[str, object]) -> tuple[float, bool, str]:
    """(ms from submit to the script's first line, started warm, the job's log)."""
    t_submit = time.time()
    job_id = client.post(f"{API}/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 600
    while "first" not in (text := _logs(client, job_id)):
        state = client.get(f"{API}/jobs/{job_id}").json()
        if state["state"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} {state['state']}: {state['exit_reason']}\n{text}")
        time.sleep(0.01)
    _, at, warm = next(x for x in text.splitlines() if x.startswith("first")).split()
    while client.get(f"{API}/jobs/{job_id}").json()["state"] not in ("succeeded", "failed"):
        time.sleep(0.05)
    return (float(at) - t_submit) * 1000, warm == "True", text


def main(rounds: int, pause: float) -> None:
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        sys.exit("run as root with bubblewrap installed: the server sandboxes jobs")
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-envs-"))
    tmp.chmod(0o711)
    env = {"NIMBUS_JOB_ISOLATION": "sandbox", "NIMBUS_EXECUTOR": "forkserver"}
    server = ServerProcess(tmp / "home", env=env).start()
    figures: dict[str, list[float]] = {"base": [], "cached environment": []}
    warm: dict[str, int] = dict.fromkeys(figures, 0)
    try:
        client = server.client(make_token(server, "member", "bench"))
        client.post(
            f"{API}/datasets/reviews/versions", params={"filename": "r.csv"}, content=csv_bytes()
        ).raise_for_status()
        refs = {}
        for name, script in (("base", BASE), ("cached environment", LAYERED)):
            code = client.post(f"{API}/code", params={"filename": "j.py"}, content=script)
            refs[name] = code.json()["ref"]
        bodies: dict[str, dict[str, object]] = {
            "base": {"dataset": "reviews", "model": refs["base"]},
            "cached environment": {
                "dataset": "reviews",
                "model": refs["cached environment"],
                "environment": REQUIREMENTS,
            },
        }
        built, _, log = _first_line(client, bodies["cached environment"])
        took = next(x for x in log.splitlines() if " built in " in x)
        print(f"first job, building the environment: {built:.0f} ms to its first line ({took})")
        _first_line(client, bodies["base"])  # the tenant's first job without one: cold
        time.sleep(pause)
        for _ in range(rounds):
            for name, body in bodies.items():
                ms, started_warm, log = _first_line(client, body)
                if name != "base" and "reused, not rebuilt" not in log:
                    raise RuntimeError(f"the environment was not reused:\n{log}")
                figures[name].append(ms)
                warm[name] += started_warm
                time.sleep(pause)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"medians over {rounds} interleaved rounds, POST /jobs -> script's first line:")
    for name, values in figures.items():
        print(
            f"  {name:>18}: {statistics.median(values):7.1f} ms (min {min(values):.1f}, "
            f"max {max(values):.1f}; {warm[name]}/{rounds} started in a warm sandbox)"
        )
    ratio = statistics.median(figures["cached environment"]) / statistics.median(figures["base"])
    print(f"  cached environment / base = {ratio:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 7,
        float(sys.argv[2]) if len(sys.argv) > 2 else 15.0,
    )
