"""Small effects on this machine that the server, the SDK and the fleet share: private files
written atomically, free TCP ports, listening unix sockets, a quick process exit.

This is a bottom module: it imports nothing of Nimbus.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically: the file is never readable by
    others, not even for a moment, and a reader sees the old content or the new, whole.

    The text goes to a temporary file beside ``path`` (created 0600), is fsynced, then
    renamed over ``path``; on any failure the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it
    before the caller binds it: use it where a retry or a clear failure is acceptable)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL


def bind_unix(path: Path, mode: int = 0o666) -> socket.socket:
    """A stream socket listening at ``path`` (a stale socket file there is replaced), with
    file mode ``mode``. A path too long for ``sun_path`` is bound through its directory's
    descriptor (``/proc/self/fd/N/name``), so any directory will do."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) <= UNIX_PATH_MAX:
            sock.bind(str(path))
        else:
            directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.bind(f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
        os.chmod(path, mode)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` as the interpreter's own exit does, less its teardown.

    What a program may rely on still happens, in the interpreter's order: non-daemon threads
    are waited for (and thread pools finish their queued work), exit handlers run (logging's
    flush among them), the standard streams are flushed. What is skipped is destroying every
    module's objects one by one, which no one waits on usefully: ~0.4 s of CPU for a control
    plane's imports alone, 0.9 s for a process with torch loaded, and up to a second before
    a stopped server's process is gone.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to say
            stream.flush()
    os._exit(code)
