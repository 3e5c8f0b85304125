"""What every storage server the tests start shares: a temp dir of its own and one process
group, killed as in a crash and removed with the dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class StorageServer:
    """A server started in ``self.dir`` as the leader of process group ``self.proc``."""

    dir: Path
    proc: subprocess.Popen[bytes] | None
    log: Callable[[], str]  # the tail of its log, for errors

    def spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``self.proc``, the leader of its own process group, its
        output appended to ``self.dir / log_name``."""
        with open(self.dir / log_name, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.proc

    def wait_ready(self, name: str, answers: Callable[[], object], timeout: float) -> None:
        """Until ``answers()`` returns without raising; killed, with its log in the error, if
        the server exits or ``timeout`` seconds pass first."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log()}")
            try:
                answers()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{name} not ready in {timeout}s:\n{self.log()}") from None
                time.sleep(0.1)

    def read_log(self, name: str, tail: int | None = None) -> str:
        path = self.dir / name
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if tail is None else text[-tail:]

    def kill(self) -> None:
        """SIGKILL the whole process group: no graceful flush, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
