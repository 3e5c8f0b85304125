"""The limited child that runs checks of untrusted input (nimbus.services.isolated): real
processes, each limit reached for real."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from nimbus.errors import InvalidInput, Unavailable
from nimbus.jobs.isolation import JobUser
from nimbus.services.isolated import (
    CPU,
    TIME,
    LimitedRunner,
    Limits,
    json_reply,
    limit_text,
    resolve_check_user,
    run_limited,
)

PY = sys.executable
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


def python(code: str) -> list[str]:
    return [PY, "-I", "-c", code]


def test_inputs_arrive_as_fds_in_a_scrubbed_private_place(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    code = (
        "import json, os; print(json.dumps({'a': os.read(3, 99).decode(), "
        "'b': os.read(4, 99).decode(), 'env': dict(os.environ), 'cwd': os.getcwd(), "
        "'files': os.listdir('.'), 'fd5': os.path.exists('/proc/self/fd/5')}))"
    )
    outcome = run_limited(python(code), limits=Limits(), inputs=[first, second])
    reply = json_reply(outcome)
    assert outcome.returncode == 0 and outcome.limit is None and reply is not None
    assert reply["a"] == "first" and reply["b"] == "second" and not reply["fd5"]
    assert set(reply["env"]) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "LC_CTYPE",
    }
    assert reply["env"]["HOME"] == reply["cwd"] and reply["files"] == []
    assert not Path(reply["cwd"]).exists()  # removed after


def test_the_wall_clock_limit_kills_the_whole_group() -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    outcome = run_limited(python(code), limits=Limits(wall_seconds=1.0))
    assert outcome.limit == TIME and time.monotonic() - started < 10
    grandchild = int(outcome.stdout.split()[0])
    time.sleep(0.2)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in _state(grandchild)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]


def test_the_cpu_limit_ends_a_busy_child() -> None:
    outcome = run_limited(python("while True: pass"), limits=Limits(cpu_seconds=1))
    assert outcome.limit == CPU and outcome.seconds < 5


def test_the_memory_limit_is_a_memory_error() -> None:
    code = "b = bytearray(512 * 1024**2)"
    outcome = run_limited(python(code), limits=Limits(memory_bytes=256 * 1024**2))
    assert outcome.returncode == 1 and b"MemoryError" in outcome.stderr


def test_output_is_bounded_by_the_file_size_limit() -> None:
    code = "import sys\nfor _ in range(100): sys.stdout.write('x' * 65536)"
    outcome = run_limited(python(code), limits=Limits(output_bytes=100_000))
    assert len(outcome.stdout) <= 100_000 and outcome.returncode != 0


@root_only
def test_a_root_server_checks_as_a_system_user_of_its_own() -> None:
    """The uid checks run as in their sandbox (tests/services/test_check_sandbox.py)."""
    user = resolve_check_user("auto")
    assert user is not None and user.uid != 0 and user.name == "nimbus-check"


def test_who_checks_run_as() -> None:
    assert resolve_check_user("none") is None
    assert resolve_check_user("auto", euid=1000) is None
    with pytest.raises(InvalidInput, match="no such user"):
        resolve_check_user("no-such-user-here", euid=0)
    me = JobUser.lookup(str(os.geteuid()))
    assert resolve_check_user(me.name) is None  # the server's own user


def test_the_runner_bounds_how_many_checks_run_at_once() -> None:
    runner = LimitedRunner(concurrency=2)
    code = "import os, time; print(time.time()); time.sleep(0.5); print(time.time())"
    spans: list[tuple[float, float]] = []

    def one() -> None:
        out = runner.run(python(code), limits=Limits()).stdout.split()
        spans.append((float(out[0]), float(out[1])))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert len(spans) == 4 and peak == 2


def test_a_check_that_cannot_start_is_unavailable(tmp_path: Path) -> None:
    runner = LimitedRunner(python=str(tmp_path / "no-python"))
    with pytest.raises(Unavailable, match="could not be started"):
        runner.run(python("pass"), limits=Limits())


def test_limits_are_named_in_messages() -> None:
    limits = Limits(wall_seconds=20, cpu_seconds=10, memory_bytes=512 * 1024**2)
    assert limit_text("time", limits) == "time limit of 20 s"
    assert limit_text("cpu", limits) == "CPU time limit of 10 s"
    assert limit_text("memory", limits) == "memory limit of 512 MiB"
    assert json_reply(run_limited(python("print('no json')"), limits=limits)) is None
    listed = run_limited(python("import json; print(json.dumps([1]))"), limits=limits)
    assert listed.returncode == 0 and json_reply(listed) is None
