"""The network namespace the workers of one attempt share (nimbus.jobs.netns): real
processes entered into it with nsenter, as a multi-worker attempt's launchers do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from nimbus.jobs.netns import SharedNetwork

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None, reason="nsenter needs root"
)

SERVE = """\
import socket, sys
with socket.create_server(("127.0.0.1", 0)) as server:
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    conn.sendall(b"from a worker")
    conn.close()
"""

REACH = """\
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as conn:
        print(conn.recv(64).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def entered(held: SharedNetwork, code: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={held.path}", "--", sys.executable, "-c", code, *args]


def test_processes_in_the_namespace_reach_each_other_and_nothing_of_the_host() -> None:
    held = SharedNetwork.start()
    try:
        with subprocess.Popen(entered(held, SERVE), stdout=subprocess.PIPE, text=True) as first:
            assert first.stdout is not None
            port = first.stdout.readline().strip()
            second = subprocess.run(
                entered(held, REACH, port), capture_output=True, text=True, timeout=30
            )
            assert second.stdout.strip() == "from a worker", second.stderr
        with socket.create_server(("127.0.0.1", 0)) as host:
            outside = subprocess.run(
                entered(held, REACH, str(host.getsockname()[1])),
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert outside.stdout.strip() == "ConnectionRefusedError", outside.stderr
    finally:
        held.close()
    assert held.proc.returncode is not None  # the holder is gone, and the namespace with it


def test_the_holder_ends_with_its_server() -> None:
    """Its stdin is the server's pipe: when the server is gone, so is the holder."""
    held = SharedNetwork.start()
    assert held.proc.stdin is not None
    held.proc.stdin.close()
    assert held.proc.wait(timeout=10) == 0
    held.close()
