"""A throwaway Nimbus server in a child process, for ``nimbus demo``.

``python -m nimbus.server`` with its own NIMBUS_HOME on a free loopback port; the server
writes the bootstrap admin token to NIMBUS_HOME/admin-token on first start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nimbus.client import Client
from nimbus.config import load_settings
from nimbus.errors import NimbusError, Unavailable
from nimbus.system import free_port


class EmbeddedServer:
    """Start, wait for, and stop one server process (its whole process group)."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sleep = sleep
        self._clock = clock

    def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until it answers and its admin token exists; returns it."""
        self.home.mkdir(parents=True, exist_ok=True)
        # Only this server's settings: never inherit a real NIMBUS_DATABASE_URL and the like.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env["NIMBUS_HOME"] = str(self.home)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nimbus.server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            return self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> str:
        deadline = self._clock() + timeout
        token_file = self.home / "admin-token"
        settings = load_settings(home=self.home)
        with Client(self.url, "", settings=settings, timeout=2.0) as probe:
            while self._clock() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise Unavailable(
                        f"the demo server exited with code {self.proc.returncode}; "
                        f"last log lines: {self.log_tail()}"
                    )
                try:
                    probe.health()
                    if token_file.exists() and token_file.read_text().strip():
                        return token_file.read_text().strip()
                except NimbusError:
                    pass
                self._sleep(0.1)
        raise Unavailable(
            f"the demo server did not start within {timeout:.0f}s; "
            f"last log lines: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, on one line."""
        if not self.log_path.exists():
            return "(no log)"
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(tail) or "(empty log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group; SIGKILL it if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
