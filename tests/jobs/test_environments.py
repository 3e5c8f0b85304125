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
from nimbus.jobs.envbuild import to_install
from nimbus.jobs.environments import (
    BuildFailed,
    Builds,
    EnvironmentSettings,
    EnvironmentStore,
    lru_order,
    take_over,
)
from nimbus.jobs.envlock import BadLock, Lock, ResolvedLocks, parse_lock
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus, Handle, Program
from nimbus.jobs.executors.environment import EnvironmentExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.policy import on_attempt_end
from nimbus.jobs.requirements import environment_key, normalise, request_key

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


def test_the_key_hashes_the_lock_so_lists_that_resolve_alike_share_one() -> None:
    """Issue 15: the environment is keyed by what the list resolved to, not by what was
    asked: ``tomli==2.0.1`` and ``tomli>=2.0.1,<2.0.2`` (two requests, two map entries)
    resolve to one lock, one environment. The platform still changes the key."""
    pinned, ranged = normalise(["tomli==2.0.1"]), normalise(["tomli>=2.0.1,<2.0.2"])
    assert request_key(pinned, PLATFORM) != request_key(ranged, PLATFORM)
    lock = parse_lock(["tomli==2.0.1", "# via the resolve", ""])
    key = environment_key(lock, PLATFORM)
    assert key != environment_key(parse_lock(["tomli==2.0.2"]), PLATFORM)
    assert key != environment_key(lock, ("python==3.12.1", *PLATFORM[1:]))


@pytest.mark.parametrize("line", ["tomli>=2", "tomli", "tomli @ https://x/t.whl", "tomli==2,<3"])
def test_a_lock_holds_exact_pins_only(line: str) -> None:
    with pytest.raises(BadLock, match="pin"):
        parse_lock([line])


def test_the_requested_lock_map_is_trusted_for_its_ttl(tmp_path: Path) -> None:
    now = [1_000.0]
    locks = ResolvedLocks(tmp_path / "resolved", ttl=3_600, clock=lambda: now[0])
    asked = normalise(["tomli>=2"])
    assert locks.get(asked, PLATFORM) is None  # never resolved here
    locks.put(asked, PLATFORM, ("tomli==2.0.1",))
    now[0] += 3_599
    assert locks.get(asked, PLATFORM) == (("tomli==2.0.1",), 3_599)
    assert locks.get(asked, ("python==3.12.1",)) is None  # another platform resolves anew
    now[0] += 1  # expired: resolved again (an unpinned requirement follows its index)
    assert locks.get(asked, PLATFORM) is None
    locks.put(asked, PLATFORM, ("tomli==2.0.2",))
    assert locks.get(asked, PLATFORM) == (("tomli==2.0.2",), 0)
    for entry in (tmp_path / "resolved").iterdir():
        entry.write_text('{"lock": ["tomli>=2"]')  # unreadable: resolved again
    assert locks.get(asked, PLATFORM) is None


def test_what_the_platform_has_is_not_installed_again_and_no_other_version_of_it() -> None:
    lock = "numpy==2.4.6\ntomli==2.0.1\n# a comment\n"
    assert to_install(lock, "numpy==2.4.6\nsix==1.16.0\n") == (["tomli==2.0.1"], [])
    # A lock resolved over another platform (a Ray node with another numpy) would be
    # shadowed by this platform's copy: refused, saying which.
    _, conflicts = to_install(lock, "numpy==2.3.0\n")
    assert conflicts == ["numpy==2.4.6 (this node's platform has numpy==2.3.0)"]


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
        builds.locks.put(normalise(["tomli==2.0.1"]), PLATFORM, ("tomli==2.0.1",))
        key = environment_key(("tomli==2.0.1",), PLATFORM)
        builds.store.path(key).mkdir()  # resolved and built before: no uv here
        readable.set()
        assert _ended(executor, handle).ok and _ended(executor, plain).ok
        said = "".join(lines)
        assert f"environment {key[:12]} found: reused" in said, said
        assert f"env {builds.store.path(key)}" in said, said
    finally:
        readable.set()
        executor.close()


def test_attempts_asking_for_one_environment_at_once_share_its_build(tmp_path: Path) -> None:
    """The second attempt that asks for an environment while it is being built waits for
    that build (tests/api/test_jobs_isolation.py sees it end to end when the timing
    allows); once built, the next request builds nothing anew."""
    gate, built = threading.Event(), []

    class Gated(Builds):
        def _build_in(self, work: Path, key: str, lock: Lock, output: object) -> None:
            built.append(key)
            gate.wait(10)
            self.store.path(key).mkdir()  # what a finished build leaves

    builds = Gated(EnvironmentSettings(tmp_path / "envs"), sandbox=None, pins=lambda _: PLATFORM)
    lock = ("tomli==2.0.1",)
    key = environment_key(lock, PLATFORM)
    try:
        first, mine = builds.request(key, lock, None)
        second, theirs = builds.request(key, lock, None)
        assert mine and not theirs and second is first
        gate.set()
        first.result(timeout=10)
        again, _ = builds.request(key, lock, None)  # after it: a new request, found built
        again.result(timeout=10)
        assert built == [key] and builds.store.ready(key)
    finally:
        gate.set()
        builds.close()


def test_a_recorded_lock_or_a_remembered_one_starts_without_a_resolve(tmp_path: Path) -> None:
    """A retry installs the job's recorded lock, whatever the map says; a first attempt
    whose list this node resolved within the TTL uses that lock and records it with the
    job. Neither resolves (no uv here: a resolve would fail as root, or without uv); past
    the TTL, the list is resolved again."""
    settings = EnvironmentSettings(tmp_path / "envs", uv="/nonexistent/uv")
    builds = Builds(settings, sandbox=None, pins=lambda python: PLATFORM)
    executor = EnvironmentExecutor(LocalExecutor(tmp_path / "jobs", grace_seconds=0.5), builds)
    asked = normalise(["tomli>=2"])
    builds.locks.put(asked, PLATFORM, ("tomli==2.0.2",))
    for pins in (("tomli==2.0.1",), ("tomli==2.0.2",)):
        builds.store.path(environment_key(pins, PLATFORM)).mkdir()
    code = "import os; print('env', os.environ['NIMBUS_JOB_ENV'])"
    try:
        builds.platform()
        recorded: list[tuple[str, ...]] = []
        said: list[str] = []
        retry = replace(
            _launch(tmp_path, "att_r", code, asked),
            lock=("tomli==2.0.1",),
            locked=recorded.append,
            output=said.append,
        )
        assert _ended(executor, executor.start(retry)).ok
        text = "".join(said)
        assert "the job's recorded lock: tomli==2.0.1" in text and "resolving" not in text
        assert f"env {builds.store.path(environment_key(('tomli==2.0.1',), PLATFORM))}" in text
        assert recorded == []  # already the job's
        said.clear()
        first = replace(
            _launch(tmp_path, "att_f", code, asked), locked=recorded.append, output=said.append
        )
        assert _ended(executor, executor.start(first)).ok
        text = "".join(said)
        assert "tomli>=2 resolved here 0s ago: locked to tomli==2.0.2" in text, text
        assert recorded == [("tomli==2.0.2",)]
        assert f"env {builds.store.path(environment_key(('tomli==2.0.2',), PLATFORM))}" in text
        # Past the TTL the remembered lock is not used: the list is resolved again (which
        # fails here, where no uv runs), though its old lock's environment is built.
        builds.locks.clock = lambda: time.time() + 86_400
        expired = replace(_launch(tmp_path, "att_x", code, asked), locked=recorded.append)
        status = _ended(executor, executor.start(expired))
        assert status.limit is ExitReason.ENVIRONMENT_BUILD_FAILED, status
        assert recorded == [("tomli==2.0.2",)]
    finally:
        executor.close()
