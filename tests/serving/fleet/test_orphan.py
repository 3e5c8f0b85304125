"""The replica's lifeline: lost only when its home and its control plane are both gone for
the whole grace period (real directories, a real HTTP server, a clock the test moves)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nimbus.serving.fleet.orphan import Lifeline, OrphanWatch
from nimbus.system import free_port

GRACE = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Unauthorised(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)  # any answer means a server is there
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorised)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def silent() -> str:
    return f"http://127.0.0.1:{free_port()}"


def watch(home: Path, url: str, clock: Clock) -> OrphanWatch:
    return OrphanWatch(Lifeline(home, url, GRACE), lambda: None, clock=clock)


def test_a_silent_server_is_not_enough_while_the_home_is_there(home: Path) -> None:
    clock = Clock()
    w = watch(home, silent(), clock)
    for clock.now in (0.0, GRACE, 100 * GRACE):
        assert not w.orphaned()


def test_a_deleted_home_is_not_enough_while_the_server_answers(home: Path, answering: str) -> None:
    clock = Clock()
    w = watch(home, answering, clock)
    shutil.rmtree(home)
    for clock.now in (0.0, GRACE, 100 * GRACE):
        assert not w.orphaned()


def test_both_gone_for_the_grace_period(home: Path) -> None:
    clock = Clock()
    w = watch(home, silent(), clock)
    shutil.rmtree(home)
    clock.now = 100.0
    assert not w.orphaned()  # the grace period starts at the first check that sees both
    clock.now = 100.0 + GRACE - 1
    assert not w.orphaned()
    clock.now = 100.0 + GRACE
    assert w.orphaned()


def test_a_new_directory_at_the_same_path_is_not_its_home(home: Path) -> None:
    clock = Clock()
    w = watch(home, silent(), clock)
    assert w.home_present()
    other = home.parent / "other"
    other.mkdir()  # made while the home still exists: another inode for certain
    shutil.rmtree(home)
    other.rename(home)  # another server's home, at the same path
    assert not w.home_present()
    assert not w.orphaned()
    clock.now = GRACE
    assert w.orphaned()


def test_the_watch_thread_survives_a_failing_check_and_calls_on_orphaned_once(
    home: Path,
) -> None:
    """Real thread, real time: a check that raises is logged and the next one runs; once
    orphaned, ``on_orphaned`` is called once and the watch ends."""
    checks: list[str] = []
    orphaned: list[float] = []

    def answers(url: str, timeout: float) -> bool:
        checks.append(url)
        if len(checks) == 1:
            raise RuntimeError("a check that fails")
        return False

    w = OrphanWatch(Lifeline(home, silent(), 0.2), lambda: orphaned.append(0.0), answers=answers)
    shutil.rmtree(home)
    w.start()
    try:
        deadline = time.monotonic() + 5
        while not orphaned:
            assert time.monotonic() < deadline, "never orphaned"
            time.sleep(0.02)
        seen = len(checks)
        time.sleep(4 * w.interval)
        assert len(checks) == seen and orphaned == [0.0]  # no check after it
    finally:
        w.stop()
