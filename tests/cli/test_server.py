"""``nimbus server`` starts the control plane and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from nimbus.system import free_port
from tests.helpers import wait_http


def test_nimbus_server_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env["NIMBUS_HOME"] = str(tmp_path / "home")
    code = "from nimbus.cli.app import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "server", "--port", str(port), "--json", "--stop-deployments"],
        env=env,
        stdin=subprocess.DEVNULL,  # not a terminal: the flag, not the default, says "stop"
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        assert (tmp_path / "home" / "admin-token").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    first = json.loads(out.decode().splitlines()[0])
    assert first["url"] == f"http://127.0.0.1:{port}" and first["home"] == str(tmp_path / "home")
    secret = (tmp_path / "home" / "admin-token").read_text().strip()
    assert first["admin_token"] is None and secret not in out.decode()  # only in the file
    assert first["admin_token_file"] == str(tmp_path / "home" / "admin-token")
    # uvicorn finishes in-flight requests, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), out.decode()
    assert "shutdown complete" in out.decode()
    assert "stops the deployments' replicas too" in out.decode()
