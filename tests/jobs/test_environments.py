"""Job environments' decisions, without a build: requirement lines, the key, the LRU, the
take-over of a build's files, the end of a failed build. The real builds (uv, PyPI, a job
uid, the sandbox) run end to end in tests/api/test_jobs_isolation.py."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nimbus.errors import InvalidInput
from nimbus.jobs.domain import ExitReason, JobState
from nimbus.jobs.envbuild import pinned, platform_versions
from nimbus.jobs.environments import (
    BuildFailed,
    Builds,
    EnvironmentSettings,
    EnvironmentStore,
    lru_order,
    take_over,
)
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus, Handle, Program
from nimbus.jobs.executors.environment import EnvironmentExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.policy import on_attempt_end
from nimbus.jobs.requirements import environment_key, normalise

PLATFORM = ("python==3.11.2", "numpy==2.4.6")


def test_requirements_have_one_spelling() -> None:
    lines = [
        "# pinned for the paper",
        "",
        "Tomli == 2.0.1  # the parser",
        "rich[Jupyter]>=13,<15",
        "typing_extensions; python_version >= '3.11'",
    ]
    assert normalise(lines) == (
        "rich[jupyter]<15,>=13",
        "tomli==2.0.1",
        'typing-extensions; python_version >= "3.11"',
    )
    assert normalise(reversed(lines)) == normalise(lines)  # order does not matter


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("--extra-index-url https://evil.example", "options"),
        ("-c constraints.txt", "options"),
        ("pkg @ file:///etc/passwd", "URLs"),
        ("../pkg", "paths"),
        ("~/pkg", "paths"),
        ("pkg.tar.gz", "archives"),
        ("x" * 400, "longer than"),
        ("numpy ==", "not a requirement"),
    ],
)
def test_requirement_lines_other_than_packages_are_refused(line: str, named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        normalise([line])


def test_the_key_changes_with_the_list_and_the_platform() -> None:
    key = environment_key(normalise(["tomli==2.0.1"]), PLATFORM)
    assert key == environment_key(normalise(["TOMLI==2.0.1 # same"]), PLATFORM)
    assert key != environment_key(normalise(["tomli==2.0.2"]), PLATFORM)
    assert key != environment_key(normalise(["tomli==2.0.1"]), ("python==3.12.1", *PLATFORM[1:]))


def test_what_the_platform_has_is_not_installed_again() -> None:
    resolved = "numpy==2.4.6\ntomli==2.0.1\n# a comment\nsix==1.17.0\n"
    have = platform_versions("numpy==2.4.6\nsix==1.16.0\n")
    added = [line for name, version, line in pinned(resolved) if have.get(name) != version]
    assert added == ["tomli==2.0.1", "six==1.17.0"]


def _env(store: EnvironmentStore, key: str, size: int, used_at: float) -> None:
    path = store.path(key)
    path.mkdir()
    (path / "blob").write_bytes(os.urandom(size))
    os.utime(path, (used_at, used_at))


def test_the_least_recently_used_environments_go_first_never_a_held_one(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "envs", max_bytes=300_000)
    now = time.time()
    _env(store, "old", 100_000, now - 300)
    _env(store, "older", 100_000, now - 400)
    _env(store, "new", 150_000, now - 10)
    assert store.victims(held=[]) == ["older"]  # 350k over 300k: the oldest goes
    assert store.victims(held=["older"]) == ["old"]  # held: skipped, the next one goes
    store.remove("older")
    assert sorted(store.keys()) == ["new", "old"] and store.victims(held=[]) == []
    assert lru_order({"a": 1, "b": 2}, {"a": 5.0, "b": 5.0}) == ["b", "a"]
    # What a build cut short by its server's end left: removed once older than any build.
    left, running = (store.root / ".build" / name for name in ("k1-dead", "k2-live"))
    left.mkdir()
    running.mkdir()
    os.utime(left, (now - 4000, now - 4000))
    assert store.purge_builds(older_than=3600) == [left] and running.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another uid need root")
def test_a_build_only_hands_over_its_own_plain_files(tmp_path: Path) -> None:
    builder = 2_000_000_123
    target = tmp_path / "env"
    (target / "pkg").mkdir(parents=True)
    (target / "pkg" / "tool").write_text("#!/bin/sh\n")
    os.chmod(target / "pkg" / "tool", 0o4777)  # setuid, world-writable: both go
    (target / "pkg" / "mod.py").write_text("x = 1\n")
    for path in (target, target / "pkg", target / "pkg" / "tool", target / "pkg" / "mod.py"):
        os.lchown(path, builder, builder)
    take_over(target, builder)
    assert (target / "pkg" / "tool").stat().st_mode & 0o7777 == 0o755
    assert (target / "pkg" / "mod.py").stat().st_mode & 0o7777 == 0o644
    assert {p.stat().st_uid for p in target.rglob("*")} == {0}
    # A hard link to a file it did not make, a file of another uid, a fifo: refused.
    for bad in ("link", "other", "fifo"):
        odd = tmp_path / f"odd-{bad}"
        odd.mkdir()
        os.lchown(odd, builder, builder)
        if bad == "link":
            victim = tmp_path / "victim"
            victim.write_text("secret")
            os.chown(victim, builder, builder)
            os.link(victim, odd / "linked")
        elif bad == "other":
            (odd / "planted").write_text("x")
        else:
            os.mkfifo(odd / "pipe")
            os.lchown(odd / "pipe", builder, builder)
        with pytest.raises(BuildFailed):
            take_over(odd, builder)


def test_a_failed_build_fails_the_job_at_once_with_uv_s_message() -> None:
    message = "the resolve failed: nonexistent-pkg-xyz was not found in the package registry"
    status = ExitStatus(None, limit=ExitReason.ENVIRONMENT_BUILD_FAILED, detail=message)
    outcome = status.outcome()
    assert outcome.reason is ExitReason.ENVIRONMENT_BUILD_FAILED

    class Facts:
        attempts, max_retries, deadline_at, cancel_requested = 1, 5, None, False

    decision = on_attempt_end(Facts(), outcome, datetime.now(UTC))
    assert decision.job_state is JobState.FAILED  # retries left, none taken
    assert decision.message == f"environment_build_failed: {message}: not retried"


def _launch(
    tmp_path: Path, attempt: str, code: str, requirements: tuple[str, ...]
) -> AttemptLaunch:
    return AttemptLaunch(
        job_id="job_e",
        attempt_id=attempt,
        attempt_number=1,
        token="njt_x",
        program=Program(code=code),
        workdir=tmp_path / "jobs" / "job_e" / attempt,
        nimbus_url="http://127.0.0.1:1",
        requirements=requirements,
    )


def _ended(executor: EnvironmentExecutor, handle: Handle) -> ExitStatus:
    deadline = time.monotonic() + 30
    while (ended := executor.poll(handle)) is None:
        assert time.monotonic() < deadline, "the attempt did not end"
        time.sleep(0.02)
    return ended


def test_the_key_is_computed_off_the_schedulers_thread(tmp_path: Path) -> None:
    """Reading the platform's packages runs the interpreter (~1 s): a start never waits
    for it (it used to, on the scheduler's tick); the attempt waits in poll() instead, and
    a failed read ends it as the node's fault (retried), the next one reading again."""
    readable, reads = threading.Event(), []

    def slow_pins(python: str) -> tuple[str, ...]:
        reads.append(python)
        if len(reads) == 1:
            raise OSError("the interpreter is gone")
        readable.wait(10)
        return PLATFORM

    settings = EnvironmentSettings(tmp_path / "envs", python="/opt/python3")
    builds = Builds(settings, sandbox=None, pins=slow_pins)
    executor = EnvironmentExecutor(LocalExecutor(tmp_path / "jobs", grace_seconds=0.5), builds)
    code = "import os; print('env', os.environ['NIMBUS_JOB_ENV'])"
    try:
        failed = executor.start(_launch(tmp_path, "att_0", code, ("tomli==2.0.1",)))
        status = _ended(executor, failed)
        assert status.limit is ExitReason.INFRA and "the interpreter is gone" in status.detail
        lines: list[str] = []
        launch = replace(_launch(tmp_path, "att_1", code, ("tomli==2.0.1",)), output=lines.append)
        began = time.monotonic()
        handle = executor.start(launch)
        plain = executor.start(_launch(tmp_path, "att_2", "print('plain')", ()))
        assert time.monotonic() - began < 1.0 and reads == ["/opt/python3"] * 2
        time.sleep(0.2)
        assert executor.poll(handle) is None and lines == []  # waits for the platform
        key = environment_key(normalise(["tomli==2.0.1"]), PLATFORM)
        builds.store.path(key).mkdir()  # built before: no uv here
        readable.set()
        assert _ended(executor, handle).ok and _ended(executor, plain).ok
        said = "".join(lines)
        assert f"environment {key[:12]} found: reused" in said, said
        assert f"env {builds.store.path(key)}" in said, said
    finally:
        readable.set()
        executor.close()
