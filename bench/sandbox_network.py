"""What a network of its own costs a sandboxed attempt, and the sandbox a check of uploads
(issue 8): medians of interleaved runs, in the same run, as ratios to their baselines.

Not a test (no timed asserts): ``python bench/sandbox_network.py [--rounds N]`` as root
with bubblewrap. Each round starts, in turn:

- ``host net``: a sandboxed ``python -c pass`` on the host's network (bwrap ``--share-net``,
  the sandbox before this change): the baseline;
- ``own net``: the same in a network namespace of its own (one worker, now);
- ``shared net``: the same entered into a held namespace (``nsenter``), the holder started
  and ended around it (what a multi-worker attempt adds, once per attempt);
- ``check, unsandboxed``: a compile check of a small script as the server's user (the
  baseline; before, a root server ran it as ``nimbus-check``, same cost);
- ``check, sandboxed``: the same check in the job sandbox (bwrap, a cgroup, no network).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nimbus.config import Settings
from nimbus.jobs.isolation import resolve_isolation
from nimbus.jobs.netns import SharedNetwork
from nimbus.jobs.sandbox import AttemptView, bwrap_argv, launcher_argv
from nimbus.server import check_confinement
from nimbus.services.code import CompileCheck
from nimbus.services.isolated import Confinement, LimitedRunner, Limits


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        sys.exit("needs root and bubblewrap")
    base = Path(tempfile.mkdtemp(prefix="nimbus-bench-"))
    base.chmod(0o711)
    try:
        run(base, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, rounds: int) -> None:
    home = base / "home"
    home.mkdir(mode=0o711)
    isolation = resolve_isolation(
        "sandbox",
        home,
        instance="bench",
        uid_first=2_000_000_000,
        uid_count=65_536,
        disk_limit_bytes=1024**3,
        pids_per_worker=256,
        keep_failed_seconds=0,
        job_api_dir=home / "run",
    )
    assert isolation.sandbox is not None, isolation.refused
    settings = isolation.sandbox.settings
    uid, gid = settings.uid_first, settings.tenant_gid(None)
    workdir = base / "work"
    workdir.mkdir()
    os.chown(workdir, uid, gid)
    program = [sys.executable, "-S", "-c", "pass"]

    def sandboxed(extra: list[str], netns: str | None = None) -> None:
        view = AttemptView(uid, gid, workdir, netns=netns)
        inner = bwrap_argv(settings, view, program)
        inner[1:1] = extra
        argv = launcher_argv([], settings.disk_limit_bytes, uid, gid, inner, netns=netns)
        subprocess.run(argv, check=True, cwd=workdir, env={"PATH": "/usr/bin:/bin"})

    def shared() -> None:
        held = SharedNetwork.start()
        try:
            sandboxed([], held.path)
        finally:
            held.close()

    check_settings = Settings(home=home, job_isolation="sandbox")
    confined = check_confinement(check_settings)
    assert confined.sandbox is not None, confined.refused
    script = base / "job.py"
    script.write_text("import json\nprint(json.dumps({'ok': True}))\n" * 50)
    limits = Limits(wall_seconds=30, cpu_seconds=30)
    plain = CompileCheck(LimitedRunner(confinement=Confinement()), limits)
    boxed = CompileCheck(LimitedRunner(confinement=confined), limits)

    cases: dict[str, Callable[[], None]] = {
        "host net": lambda: sandboxed(["--share-net"]),
        "own net": lambda: sandboxed([]),
        "shared net": shared,
        "check, unsandboxed": lambda: plain(script, "job.py"),
        "check, sandboxed": lambda: boxed(script, "job.py"),
    }
    for fn in cases.values():  # warm the page cache
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{rounds} interleaved rounds, medians:")
    for name, value in median.items():
        baseline = "check, unsandboxed" if name.startswith("check") else "host net"
        print(f"  {name:20s} {value * 1000:7.1f} ms  x{value / median[baseline]:.2f}")


if __name__ == "__main__":
    main()
