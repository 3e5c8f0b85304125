"""Private files written atomically, and free ports."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from nimbus.system import free_port, write_private


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
