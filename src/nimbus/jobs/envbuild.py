"""The build of one job environment, as a program: ``python -m nimbus.jobs.envbuild``.

It runs in the build's sandbox, as an unprivileged uid (see
:mod:`nimbus.jobs.environments`): a package's build step runs code. Three steps, their
output on stdout (it streams into the job's log):

1. ``uv pip compile`` resolves the requirements with the platform's packages as
   constraints: a dependency the platform already has (numpy, torch...) resolves to the
   platform's version, or the resolve fails with uv's message saying which conflicts.
2. What the platform already has (same name, same version) is dropped: the environment
   holds only what it adds, and the platform's copies stay the ones imported.
3. ``uv pip install --target`` installs the rest, without dependencies (all resolved).

A failure writes uv's last lines to ``--result`` (the job's failure reason) and exits 1.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

TAIL_LINES = 12


def run_step(argv: list[str], title: str) -> tuple[int, str]:
    """Run one step, its output passed on line by line; (exit code, its last lines)."""
    print(f"nimbus: environment: {title}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        print(line, flush=True)
        if line.strip():
            tail.append(line.strip())
    return proc.wait(), "\n".join(tail)


def pinned(resolved: str) -> list[tuple[str, str, str]]:
    """(canonical name, version, line) of each ``NAME==VERSION`` line uv wrote."""
    found: list[tuple[str, str, str]] = []
    for line in resolved.splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        specs = list(requirement.specifier)
        version = specs[0].version if len(specs) == 1 and specs[0].operator == "==" else ""
        found.append((canonicalize_name(requirement.name), version, text))
    return found


def platform_versions(constraints: str) -> dict[str, str]:
    return {name: version for name, version, _ in pinned(constraints) if version}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nimbus.jobs.envbuild")
    for name in ("uv", "python", "requirements", "constraints", "target", "result"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    work = Path(args.target).parent
    resolved, install = work / "resolved.txt", work / "install.txt"
    common = ["--python", args.python, "--no-progress", "--no-config"]
    print(f"nimbus: environment: building as uid {os.getuid()}", flush=True)
    code, tail = run_step(
        [
            *(args.uv, "pip", "compile", args.requirements, "-c", args.constraints),
            *("-o", str(resolved), "--no-header", "--no-annotate", *common),
        ],
        "resolving",
    )
    if code != 0:
        Path(args.result).write_text(f"the resolve failed: {tail}")
        return 1
    have = platform_versions(Path(args.constraints).read_text())
    resolved_pins = pinned(resolved.read_text())
    added = [line for name, version, line in resolved_pins if have.get(name) != version]
    install.write_text("".join(f"{line}\n" for line in added))
    Path(args.target).mkdir()
    if not added:
        print("nimbus: environment: the platform has every package already", flush=True)
        return 0
    code, tail = run_step(
        [
            *(args.uv, "pip", "install", "--target", args.target, "--no-deps"),
            *("-r", str(install), *common),
        ],
        f"installing {len(added)} package(s)",
    )
    if code != 0:
        Path(args.result).write_text(f"the install failed: {tail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
