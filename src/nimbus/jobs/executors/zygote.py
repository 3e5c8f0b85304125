"""The fork server's zygote: a process that imported the heavy modules once and forks a
child per worker. Run by :class:`~.forkserver.ForkServerExecutor`, never by hand::

    python -P .../zygote.py SOCKET_FD '["torch"]'

Standard library only, single-threaded (forking a threaded process is unsafe). Speaks JSON
messages over a ``SOCK_SEQPACKET`` Unix socket; each spawn request carries the write end of
the worker's output pipe. Replies ``{"id", "pid"}`` or ``{"id", "error"}``; reports
``{"exit": pid, "code"|"signal"}`` when a child ends. When the server goes away (the socket
closes) it kills every child's process group and exits.

A warm sandbox's zygote may serve one attempt after another (see :mod:`.warm`): between two,
``{"id", "reset": true}`` empties what the sandbox keeps outside the work directory
(``/dev/shm``, System V IPC objects) and replies ``{"id", "cleared": n}``. The zygote is
not dumpable, so the jobs it forks (its uid) cannot trace it, read or write its memory, or
open its file descriptors (its socket to the server) through ``/proc``; each child is made
dumpable again for itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import random
import runpy
import selectors
import shutil
import signal
import socket
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_IPC_RMID = 0
SHM_DIR = "/dev/shm"
_LIBC = ctypes.CDLL(None)
MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _reseed() -> None:
    """Every child would otherwise share the zygote's random state (jobs without a seed
    would all draw the same numbers)."""
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _run_child(request: dict[str, Any]) -> int:
    """Become the job: the process is already in its own session with its fds in place."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    sys.path.insert(0, request["cwd"])  # as ``python -m``/``-c`` would
    _reseed()
    try:
        if request.get("module"):
            sys.argv = [request["module"], *request["args"]]
            # Preloaded (its imports are what the zygote keeps warm): runpy runs its code
            # afresh as __main__ either way, and warns into the job's log if it finds it.
            sys.modules.pop(request["module"], None)
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *request["args"]]
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(request["code"], "<string>", "exec"), main.__dict__)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        # Drop this frame from the traceback: the job's own frames are what matter.
        traceback.print_exception(
            type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None
        )
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def _fork(request: dict[str, Any], out_fd: int, keep_closed: list[int]) -> int:
    """Fork a child that becomes the job; returns its pid (in the zygote only)."""
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in keep_closed:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.close(devnull)
        # Die with the zygote even if it is SIGKILLed (only its own child, not grandchildren).
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote:  # it died before prctl took effect
            os._exit(1)
        _LIBC.prctl(_PR_SET_DUMPABLE, 1)  # the zygote's stays 0: see the module's docstring
        code = _run_child(request)
    except BaseException:
        traceback.print_exc()  # fd 2 is the job's output by now, or the zygote's stderr
    finally:
        os._exit(code)


def _clear() -> int:
    """Remove what an attempt left in the sandbox outside its work directory: ``/dev/shm``'s
    entries and the IPC namespace's System V objects; how many."""
    cleared = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(SHM_DIR):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                cleared += 1
    removers: dict[str, Callable[[int], int]] = {
        "shm": lambda ident: int(_LIBC.shmctl(ident, _IPC_RMID, None)),
        "sem": lambda ident: int(_LIBC.semctl(ident, 0, _IPC_RMID)),
        "msg": lambda ident: int(_LIBC.msgctl(ident, _IPC_RMID, None)),
    }
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as listing:
                rows = listing.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 1 and fields[1].isdigit() and remove(int(fields[1])) == 0:
                cleared += 1
    return cleared


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return
        pid = info.si_pid
        # Still a zombie: its group id cannot be reused, so killing leftovers is safe.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        children.discard(pid)
        if os.WIFSIGNALED(status):
            _send(sock, {"exit": pid, "signal": os.WTERMSIG(status)})
        else:
            _send(sock, {"exit": pid, "code": os.WEXITSTATUS(status)})


def serve(sock: socket.socket, preload: list[str]) -> None:
    failed = {}
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # reported, not fatal: children import it themselves
            failed[name] = repr(exc)
    # Move what the imports made out of the collector's reach: children then do not touch
    # (and copy) those pages when they collect garbage.
    gc.freeze()
    _LIBC.prctl(_PR_SET_DUMPABLE, 0)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    _send(sock, {"ready": True, "pid": os.getpid(), "failed": failed})
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.fileobj == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 4096):
                            break
                    except BlockingIOError:
                        break
                continue
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
            if not data:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                return
            request = json.loads(data)
            if request.get("reset") is True:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"id": request["id"], "cleared": _clear()})
                continue
            try:
                pid = _fork(request, fds[0], [sock.fileno(), wake_r, wake_w])
                children.add(pid)
                _send(sock, {"id": request["id"], "pid": pid})
            except Exception as exc:
                _send(sock, {"id": request["id"], "error": repr(exc)})
            finally:
                for fd in fds:
                    os.close(fd)
        _reap(sock, children)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), json.loads(sys.argv[2]))
