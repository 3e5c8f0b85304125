"""A real Ray cluster of two nodes on this machine, for the Ray executor's tests.

``ray start --head`` on 127.0.0.1 (custom resource ``node_a``) and a second ``ray start
--address`` (``node_b``): a second raylet on the same host is a second node. Token
authentication on (as Ray 2.60 defaults), with a token made for the session. Each node is
started in a process group of its own, so a test can kill one node (its raylet) and the
session stops exactly its own processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nimbus.client import Client
from nimbus.errors import InvalidInput
from nimbus.system import free_port
from nimbus.wire.jobs import Job

# The venv's ``ray``, by absolute path; where the interpreter has no such script beside it
# (packages unpacked onto PYTHONPATH, as on a machine lent for the GPU checks), its module.
_SCRIPT = Path(sys.executable).with_name("ray")
RAY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
# Dead nodes noticed in ~3 s rather than Ray's default ~30 s.
FAST_HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
    "RAY_health_check_initial_delay_ms": "0",
}


class RayNodeProcess:
    """One ``ray start`` (its daemons share the process group of the ``ray start``)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.pgid: int | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                [*RAY, "start", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pgid = proc.pid
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"ray start failed:\n{self.log.read_text(errors='replace')}")

    def raylet_pid(self) -> int:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
        raise AssertionError("no raylet in this node's process group")

    def alive(self) -> bool:
        try:
            self.raylet_pid()
        except AssertionError:
            return False
        return True

    def node_id(self) -> str:
        """Ray's id of this node, from its raylet's command line."""
        args = Path(f"/proc/{self.raylet_pid()}/cmdline").read_bytes().split(b"\0")
        for arg in args:
            if arg.startswith(b"--node_id="):
                return arg.split(b"=", 1)[1].decode()
        raise AssertionError("the raylet's command line names no node id")

    def pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError):
                    if os.getpgid(int(entry.name)) == self.pgid:
                        found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL every process of this node (its daemons and workers)."""
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)


class RayTestCluster:
    """Head (``node_a``) plus one worker node (``node_b``), 2 CPUs each, and the GPUs that
    ``gpus`` gives a node (none otherwise: Ray would give every raylet on a GPU machine all
    of its GPUs, the same ones)."""

    def __init__(
        self, root: Path, *, dashboard: bool = False, gpus: dict[str, int] | None = None
    ) -> None:
        self.root = root
        self.gpus = gpus or {}
        # Ray's sockets lie under its temp dir, and a unix socket's path is at most 107
        # bytes: pytest's tmp paths (deeper under xdist) are too long for it.
        self.temp = Path(tempfile.mkdtemp(prefix="nray-"))
        # Ray Jobs' REST API (bench/cluster.py compares it), on a free port when asked.
        self.dashboard_port = free_port() if dashboard else None
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NIMBUS_"))}
        self.env.update(FAST_HEALTH, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.nodes: dict[str, RayNodeProcess] = {}
        self.jobs_dir = root / "jobs"  # attempts' work directories on the nodes

    def common(self, name: str, first_port: int, *, movable: bool = False) -> list[str]:
        resources = {name: 1, **({"movable": 1} if movable else {})}
        return [
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            f"--num-gpus={self.gpus.get(name, 0)}",
            f"--resources={json.dumps(resources)}",
            "--disable-usage-stats",
            # Ports of their own, not Ray's fixed defaults: another cluster may run here.
            # Worker port ranges lie below the kernel's ephemeral range (32768-60999 by
            # default), where free_port() and every outgoing connection take theirs: a
            # port picked there once landed inside a range and failed the 'ray start'.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--min-worker-port={first_port}",
            f"--max-worker-port={first_port + 999}",
        ]

    def start(self) -> RayTestCluster:
        head = [
            "--head",
            f"--port={self.port}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp}",
            *(
                [f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1"]
                if self.dashboard_port
                else ["--include-dashboard=false"]
            ),
            *self.common("node_a", 21000),
        ]
        self.nodes["node_a"] = RayNodeProcess(head, self.env, self.root / "head.log")
        try:
            self.nodes["node_a"].start()
            self.start_worker()
        except BaseException:
            self.stop()  # what did start: a failed session must leave no daemons behind
            raise
        return self

    def start_worker(self, name: str = "node_b", first_port: int = 23000) -> None:
        self.start_workers({name: first_port}, movable=name == "node_b")

    def ensure_node_b(self) -> None:
        """``node_b`` up again if a test killed it."""
        if not self.nodes["node_b"].alive():
            self.nodes["node_b"].kill()  # what is left of it
            self.start_worker()

    def start_workers(self, ports: dict[str, int], *, movable: bool = False) -> None:
        """Worker nodes, one after the other (two ``ray start`` at once on one address
        confuse each other): resources ``{name: 1}`` each, and ``movable: 1`` when asked
        (what a job asks for to run on any of them)."""
        for name, first_port in ports.items():
            args = [f"--address={self.address}", *self.common(name, first_port, movable=movable)]
            node = RayNodeProcess(args, self.env, self.root / f"{name}.log")
            self.nodes[name] = node
            node.start()

    def server_env(self) -> dict[str, str]:
        """What a Nimbus server using this cluster needs in its environment."""
        return {
            "NIMBUS_EXECUTOR": "ray",
            "NIMBUS_RAY_ADDRESS": self.address,
            "NIMBUS_RAY_JOBS_DIR": str(self.jobs_dir),
            "RAY_AUTH_TOKEN": self.token,
            "RAY_AUTH_MODE": "token",
        }

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()
        time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


def submit_once_placeable(api: Client, *args: Any, **kwargs: Any) -> Job:
    """``api.submit_job``, again while the server refuses it for want of a node: a node
    that has just (re)joined the cluster reaches the server's listing of the nodes a few
    seconds later, and until then a job that needs it is refused at submit, by design."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return api.submit_job(*args, **kwargs)
        except InvalidInput as exc:
            if "no node of the Ray cluster" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)
