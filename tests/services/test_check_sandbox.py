"""Checks of uploads run in the job sandbox, for real (issue 8): a root server's check child
is a bubblewrap sandbox as the check user, in a cgroup of its own, with no network and no
view of NIMBUS_HOME. Hostile check children try what a hostile upload's code would: read
the admin token, reach services on the host, fork past their limits, outlive the check.
Before, the child was an ordinary process of the ``nimbus-check`` user (or of the server's
own, as a fallback), on the host's network and file system, with per-process limits only."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.config import Settings
from nimbus.errors import Unavailable
from nimbus.jobs.isolation import Isolation
from nimbus.server import check_confinement
from nimbus.services.isolated import (
    MEMORY,
    Confinement,
    LimitedRunner,
    Limits,
    confine_checks,
    json_reply,
    run_limited,
)
from tests.helpers import passable_dir

PY = sys.executable


def python(code: str) -> list[str]:
    return [PY, "-I", "-c", code]


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A server's NIMBUS_HOME holding an admin token that any user could read (0644): only
    the sandbox's view keeps it from a check."""
    with passable_dir() as base:
        home = base / "home"
        home.mkdir(mode=0o711)
        (home / "admin-token").write_text("nbt_admin-secret\n")
        (home / "admin-token").chmod(0o644)
        yield home


@pytest.fixture(scope="module")
def confinement(home: Path) -> Confinement:
    found = check_confinement(Settings(home=home, job_isolation="sandbox"))
    if found.sandbox is None:
        pytest.fail(f"checks cannot be sandboxed here: {found.refused}")
    return found


@contextlib.contextmanager
def listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


HOSTILE = """\
import json, os, socket
def attempt(fn):
    try:
        return "allowed: " + repr(fn())[:40]
    except OSError as exc:
        return type(exc).__name__
def connect():
    with socket.create_connection(("127.0.0.1", {port}), timeout=2):
        return "connected"
print(json.dumps({{
    "admin-token": attempt(lambda: open("{home}/admin-token").read()),
    "home": attempt(lambda: os.listdir("{home}")),
    "tcp": attempt(connect),
    "given": os.read(3, 99).decode(),
    "uid": os.getuid(),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}}))
"""


def test_a_hostile_check_sees_only_its_input(
    confinement: Confinement, home: Path, tmp_path: Path
) -> None:
    given = tmp_path / "upload.py"
    given.write_text("print('the upload')")
    with listening() as port:
        code = HOSTILE.format(home=home, port=port)
        outcome = run_limited(
            python(code), limits=Limits(), inputs=[given], confinement=confinement
        )
    reply = json_reply(outcome)
    assert reply is not None, outcome.stderr.decode()
    assert reply["given"] == "print('the upload')"  # its input, as an fd
    for name in ("admin-token", "home", "tcp"):
        assert not reply[name].startswith("allowed"), reply
    assert confinement.user is not None and reply["uid"] == confinement.user.uid
    assert len(reply["pids"]) <= 3  # its own PID namespace: bwrap's init, the check


def test_the_runner_of_a_server_runs_its_checks_sandboxed(
    confinement: Confinement, home: Path
) -> None:
    runner = LimitedRunner(confinement=lambda: confinement)
    code = f"import os; print(os.path.exists({str(home)!r}), os.path.exists('/root'))"
    outcome = runner.run(python(code), limits=Limits())
    assert outcome.stdout.split() == [b"False", b"False"], outcome.stderr


FORKS = """\
import os, sys, time
made = 0
try:
    for _ in range(300):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
except OSError:
    pass
print(made, flush=True)
"""


def test_a_forking_check_is_stopped_by_its_process_limit(confinement: Confinement) -> None:
    outcome = run_limited(python(FORKS), limits=Limits(wall_seconds=20), confinement=confinement)
    assert 0 < int(outcome.stdout.split()[0]) < 64, outcome.stderr


def test_memory_is_limited_for_the_whole_tree(confinement: Confinement) -> None:
    """Four processes of 200 MiB each: every one under the per-process limit, together
    over it; the cgroup ends the check (before, each rlimit held and all four lived)."""
    code = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "block = bytearray(200 * 2**20)\n"
        "block[::4096] = b'1' * len(block[::4096])\n"
        "time.sleep(5)\n"
        "print('all alive', flush=True)\n"
    )
    limits = Limits(wall_seconds=30, memory_bytes=512 * 2**20)
    outcome = run_limited(python(code), limits=limits, confinement=confinement)
    assert outcome.limit == MEMORY and b"all alive" not in outcome.stdout, outcome


def test_nothing_a_check_starts_outlives_it(confinement: Confinement) -> None:
    marker = f"nimbus-check-escapee-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 3)\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "    os._exit(0)\n"
        "print('left one behind', flush=True)\n"
    )
    outcome = run_limited(python(code), limits=Limits(), confinement=confinement)
    assert b"left one behind" in outcome.stdout
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_checks_are_refused_rather_than_run_as_the_server(home: Path) -> None:
    def never(user: object) -> Isolation:
        raise AssertionError("no sandbox should be tried")

    not_root = confine_checks("sandbox", "auto", never, euid=1000)
    assert not_root.refused is not None and "root" in not_root.refused
    assert "NIMBUS_JOB_ISOLATION=none" in not_root.refused
    as_server = confine_checks("sandbox", "none", never, euid=0)
    assert as_server.refused is not None and "own user" in as_server.refused
    blocked = confine_checks(
        "sandbox", "auto", lambda user: Isolation("sandbox", refused="/opt/venv is 0700"), euid=0
    )
    assert blocked.refused == "/opt/venv is 0700"
    runner = LimitedRunner(confinement=blocked)
    with pytest.raises(Unavailable, match="refused: /opt/venv is 0700"):
        runner.run(python("print(1)"), limits=Limits())
    # Unsandboxed only when the operator said so for jobs too.
    assert confine_checks("none", "auto", never, euid=0) == Confinement()
