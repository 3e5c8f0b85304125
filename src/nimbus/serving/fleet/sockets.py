"""Listening sockets shared by a deployment's replicas, and finding them again after a restart.

A deployment listens on one socket that the supervisor creates (SO_REUSEADDR + SO_REUSEPORT,
bound and listening) and passes to every replica: the kernel keeps one accept queue that all
replicas take connections from, and that outlives any one of them. Each replica also gets a
private socket on an ephemeral port, for health checks that must reach *that* replica.

After a control-plane restart the shared socket is taken back from a surviving replica with
pidfd_getfd(2) when the kernel allows it (same user and ptrace rights); otherwise a new socket
joins the port through SO_REUSEPORT. Linux only, like SO_REUSEPORT's load balancing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from pathlib import Path

DEFAULT_BACKLOG = 4096
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture
_TCP_LISTEN = "0A"


def open_listener(
    host: str, port: int, *, reuse_port: bool = True, backlog: int = DEFAULT_BACKLOG
) -> socket.socket:
    """A bound, listening TCP socket (``port`` 0: an ephemeral one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` already. Binding with SO_REUSEPORT
    would silently join that listener's group (when it is ours): ask first."""
    try:
        open_listener(host, port, reuse_port=False, backlog=1).close()
    except OSError:
        return True
    return False


def listening_ports(pid: int, fds: list[int]) -> dict[int, int]:
    """For the given fds of process ``pid``: ``{fd: port}`` of those that are listening TCP
    sockets. Empty when the process is gone or not ours to inspect."""
    inodes: dict[str, int] = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes[target[len("socket:[") : -1]] = fd
    ports: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _TCP_LISTEN and cols[9] in inodes:
                ports[inodes[cols[9]]] = int(cols[1].rsplit(":", 1)[1], 16)
    return ports


def command_line(pid: int) -> list[str]:
    """A process's argv (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def reclaim(pid: int, fd: int) -> socket.socket | None:
    """A duplicate of process ``pid``'s file descriptor ``fd`` as a socket, through
    pidfd_getfd(2); None where the kernel refuses (no ptrace rights, kernel < 5.6)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dup = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    except (OSError, AttributeError):
        return None
    finally:
        os.close(pidfd)
    if dup < 0:
        return None
    return socket.socket(fileno=dup)
