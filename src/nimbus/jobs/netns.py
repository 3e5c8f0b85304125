"""A network namespace that the workers of one attempt share.

Each sandbox has a network namespace of its own, with only a loopback in it; the workers of
a data-parallel attempt must reach each other (``torch.distributed`` rendezvous on
``MASTER_ADDR=127.0.0.1``), so they run in one namespace instead: held open by a small
process that util-linux's ``unshare --net`` starts in a new namespace, which brings its
loopback up and then waits. Each worker's launcher enters it (``nsenter --net``, as root,
before the uid drops; :func:`nimbus.jobs.sandbox.launcher_argv`). The holder ends when
:meth:`SharedNetwork.close` is called, or when the server that started it goes (its stdin
closes).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import sys

UNSHARE = "/usr/bin/unshare"

# Run in the new namespace: bring ``lo`` up (SIOCGIFFLAGS / SIOCSIFFLAGS on a struct
# ifreq: 16 bytes of name, the flags, padding to 40), say so, wait for stdin to close.
_HOLDER = """\
import fcntl, socket, struct, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
print("ready", flush=True)
sys.stdin.read()
"""


class SharedNetwork:
    """A held network namespace; :attr:`path` names it for ``nsenter --net``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, python: str = sys.executable, timeout: float = 10.0) -> SharedNetwork:
        """A new namespace with its loopback up; OSError if it cannot be made."""
        proc = subprocess.Popen(
            [shutil.which("unshare") or UNSHARE, "--net", "--", python, "-I", "-S", "-c", _HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd="/",
            start_new_session=True,
        )
        held = cls(proc)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout) and proc.stdout.readline() == b"ready\n"
        if not ready:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            assert proc.stderr is not None
            error = proc.stderr.read().decode(errors="replace").strip()[-500:]
            held.close()
            raise OSError(f"could not make a network namespace: {error or 'no answer'}")
        return held

    @property
    def path(self) -> str:
        return f"/proc/{self.proc.pid}/ns/net"

    def close(self) -> None:
        """End the holder (the namespace goes with the last process in it)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
