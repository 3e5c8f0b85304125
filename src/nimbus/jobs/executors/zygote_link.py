"""The server's end of a zygote's socket (:mod:`.zygote`): spawn requests, their replies,
and the exits the zygote reports, read by a listener thread.

Shared by the fork server (one zygote, unsandboxed) and the warm sandboxes (one zygote in
each, :mod:`.warm`). A sandboxed zygote belongs to its attempt once claimed, and the job's
processes could take it over: every message is parsed as untrusted, and one that does not
parse ends the link (the zygote counts as gone, its workers as killed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from nimbus.errors import Unavailable
from nimbus.jobs.executors.base import ExitStatus, Program

# Run as a script (``-P``: its directory stays off sys.path) so the zygote imports nothing
# of Nimbus: only the standard library and what it is told to preload.
ZYGOTE_SCRIPT = Path(__file__).with_name("zygote.py")
MAX_MESSAGE = 1 << 20


class ZygoteLink:
    """Talks to one zygote over ``sock`` (a ``SOCK_SEQPACKET`` Unix socket)."""

    def __init__(self, sock: socket.socket, name: str = "zygote") -> None:
        self.sock, self.name = sock, name
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, ExitStatus] = {}
        self._alive = True
        self._listener: threading.Thread | None = None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The zygote's first message, ``{"ready": true, ...}``; Unavailable if it does not
        come within ``timeout`` seconds. Then starts listening."""
        self.sock.settimeout(timeout)
        try:
            ready = json.loads(self.sock.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError):
            ready = {}
        if not isinstance(ready, dict) or ready.get("ready") is not True:
            raise Unavailable(f"the {self.name} did not start")
        self.sock.settimeout(None)
        self._listener = threading.Thread(target=self._listen, name=self.name, daemon=True)
        self._listener.start()
        return ready

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._alive

    def _listen(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            with self._lock:
                message = _parse(data)
                if message is None:  # gone (EOF), or talking nonsense: done with it
                    self._alive = False
                    self._changed.notify_all()
                    return
                if "exit" in message:
                    self._exits[message["exit"]] = message["status"]
                else:
                    self._replies[message["id"]] = message
                    self._changed.notify_all()

    def spawn(
        self, program: Program, cwd: str, env: dict[str, str], out_fd: int, timeout: float = 30
    ) -> int:
        """Ask the zygote to fork a worker running ``program`` with its output on
        ``out_fd`` (sent along; the caller still closes its copy); returns its pid (in the
        zygote's PID namespace). Unavailable if it cannot."""
        request: dict[str, Any] = {
            "id": next(self._ids),
            "cwd": cwd,
            "env": env,
            "module": program.module,
            "code": program.code,
            "args": list(program.args),
        }
        with self._lock:
            if not self._alive:
                raise Unavailable(f"the {self.name} is gone")
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [out_fd])
            except OSError as exc:
                raise Unavailable(f"the {self.name} is gone: {exc}") from None
            self._changed.wait_for(
                lambda: request["id"] in self._replies or not self._alive, timeout=timeout
            )
            silent = "it is gone" if not self._alive else f"no answer within {timeout:g} s"
            reply = self._replies.pop(request["id"], {"error": silent})
        if not isinstance(reply.get("pid"), int):
            raise Unavailable(f"the {self.name} could not start the job: {reply.get('error')}")
        return int(reply["pid"])

    def reset(self, timeout: float = 5) -> int:
        """Ask the zygote to clear what the attempt it served left in the sandbox outside
        its work directory (its workers have ended); how much it removed. Unavailable if it
        does not answer within ``timeout`` seconds (stopped, or gone)."""
        request = {"id": next(self._ids), "reset": True}
        with self._lock:
            if not self._alive:
                raise Unavailable(f"the {self.name} is gone")
            try:
                self.sock.send(json.dumps(request).encode())
            except OSError as exc:
                raise Unavailable(f"the {self.name} is gone: {exc}") from None
            self._changed.wait_for(
                lambda: request["id"] in self._replies or not self._alive, timeout=timeout
            )
            reply = self._replies.pop(request["id"], {})
        if not _is_int(reply.get("cleared")):
            raise Unavailable(f"the {self.name} did not answer")
        return int(reply["cleared"])

    def exit_of(self, pid: int) -> ExitStatus | None:
        """How worker ``pid`` ended, once; SIGKILL if the zygote is gone (its workers die
        with it), None while it runs."""
        with self._lock:
            status = self._exits.pop(pid, None)
            if status is None and not self._alive:
                status = ExitStatus(None, signal.SIGKILL)
        return status

    def close(self) -> None:
        """Close the socket: the zygote sees EOF and kills what it still runs."""
        # shutdown, not just close: the listener thread's recv holds the socket open.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join(timeout=5)


def _parse(data: bytes) -> dict[str, Any] | None:
    """A zygote's message, checked: a reply ``{"id", "pid"|"error"|"cleared"}`` or an exit
    ``{"exit", "status"}`` (an :class:`ExitStatus` by then); None for EOF or anything
    malformed."""
    if not data:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if _is_int(message.get("exit")):
        code, signo = message.get("code"), message.get("signal")
        if isinstance(signo, int) and not isinstance(signo, bool) and signo > 0:
            return {"exit": message["exit"], "status": ExitStatus(None, signo)}
        if _is_int(code):
            return {"exit": message["exit"], "status": ExitStatus(code)}
        return None
    if _is_int(message.get("id")) and (
        _is_int(message.get("pid"))
        or isinstance(message.get("error"), str)
        or _is_int(message.get("cleared"))
    ):
        return message
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
