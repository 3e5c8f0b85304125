"""Private files written atomically, free ports, listening unix sockets, a quick exit."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.system import bind_unix, free_port, write_private


def test_write_private_is_0600_and_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old and longer\n")
    path.chmod(0o644)
    write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def test_write_private_leaves_nothing_behind_when_it_fails(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_private(tmp_path / "target", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_unix_socket_binds_at_any_path_length(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    for directory in (tmp_path, deep):
        path = directory / "api.sock"
        path.write_text("stale")  # replaced
        with bind_unix(path, 0o660) as server, socket.socket(socket.AF_UNIX) as client:
            assert path.is_socket() and path.stat().st_mode & 0o777 == 0o660
            directory_fd = os.open(directory, os.O_PATH)
            try:  # connect as a job does (its path inside the sandbox is short)
                client.connect(f"/proc/self/fd/{directory_fd}/api.sock")
            finally:
                os.close(directory_fd)
            server.accept()[0].close()


QUICK_EXIT = """
import atexit, sys, threading, time
from nimbus.system import exit_now

def late():
    time.sleep(0.3)
    print("thread done", file=sys.stderr)

threading.Thread(target=late).start()  # not a daemon: waited for, as at any exit
atexit.register(lambda: print("exit handler", file=sys.stderr))
print("buffered", end="")  # stdout is a pipe: kept in its buffer until the exit flushes it
exit_now(7)
"""


def test_exit_now_keeps_what_an_exit_promises() -> None:
    """Non-daemon threads finish, exit handlers run after them, the streams are flushed,
    and the status is the one asked for."""
    done = subprocess.run(
        [sys.executable, "-c", QUICK_EXIT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 7
    assert done.stderr == "thread done\nexit handler\n"
    assert done.stdout == "buffered"
