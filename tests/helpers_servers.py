"""What every storage server the tests start shares: a temp dir of its own and one process
group, killed as in a crash and removed with the dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


class StorageServer:
    """A server started in ``self.dir`` as the leader of process group ``self.proc``."""

    dir: Path
    proc: subprocess.Popen[bytes] | None

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
