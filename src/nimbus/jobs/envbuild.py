"""The build of one job environment, as a program: ``python -m nimbus.jobs.envbuild``.

It runs in the build's sandbox, as an unprivileged uid (see
:mod:`nimbus.jobs.environments`): a package's build step runs code. Two steps, each its
own run (the first once per job, where the job is scheduled; the second on each node
that builds the environment), their output on stdout (it streams into the job's log):

- ``resolve``: ``uv pip compile`` resolves the requirements with the platform's packages
  as constraints, into the lock (``NAME==VERSION`` lines: :mod:`nimbus.jobs.envlock`): a
  dependency the platform already has (numpy, torch...) resolves to the platform's
  version, or the resolve fails with uv's message saying which conflicts.
- ``install``: what the platform already has (same name, same version) is dropped (the
  environment holds only what it adds, and the platform's copies stay the ones
  imported); a pin the platform has at another version fails; ``uv pip install
  --target`` installs the rest, without dependencies (the lock has them all).

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


def to_install(lock: str, constraints: str) -> tuple[list[str], list[str]]:
    """(the lock's pins the platform does not have, the pins that conflict with it). A
    pin of a package the platform has at another version would be shadowed by the
    platform's copy (the environment comes after it on ``sys.path``): a lock resolved
    over another platform (a Ray node with other packages) cannot be installed here."""
    have = platform_versions(constraints)
    added, conflicts = [], []
    for name, version, line in pinned(lock):
        if have.get(name) == version:
            continue
        if name in have:
            conflicts.append(f"{line} (this node's platform has {name}=={have[name]})")
        else:
            added.append(line)
    return added, conflicts


def resolve(args: argparse.Namespace, common: list[str]) -> int:
    """``uv pip compile`` into the lock (``--lock``): the pins the requirements resolve
    to over the platform's packages."""
    code, tail = run_step(
        [
            *(args.uv, "pip", "compile", args.requirements, "-c", args.constraints),
            *("-o", args.lock, "--no-header", "--no-annotate", *common),
        ],
        "resolving",
    )
    if code != 0:
        Path(args.result).write_text(f"the resolve failed: {tail}")
        return 1
    return 0


def install(args: argparse.Namespace, common: list[str]) -> int:
    """``uv pip install --target --no-deps`` of the lock's pins the platform lacks."""
    lock = Path(args.lock).read_text()
    added, conflicts = to_install(lock, Path(args.constraints).read_text())
    pins = [line for _, _, line in pinned(lock)]
    print(f"nimbus: environment: installing the lock {' '.join(pins)}", flush=True)
    if conflicts:
        Path(args.result).write_text(
            f"the lock does not fit this node's platform: {', '.join(conflicts)}"
        )
        return 1
    Path(args.target).mkdir()
    if not added:
        print("nimbus: environment: the platform has every package already", flush=True)
        return 0
    listed = Path(args.target).parent / "install.txt"
    listed.write_text("".join(f"{line}\n" for line in added))
    code, tail = run_step(
        [
            *(args.uv, "pip", "install", "--target", args.target, "--no-deps"),
            *("-r", str(listed), *common),
        ],
        f"installing {len(added)} package(s)",
    )
    if code != 0:
        Path(args.result).write_text(f"the install failed: {tail}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nimbus.jobs.envbuild")
    parser.add_argument("step", choices=("resolve", "install"))
    for name in ("uv", "python", "constraints", "lock", "result"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--requirements")  # resolve: what was asked
    parser.add_argument("--target")  # install: the environment's directory
    args = parser.parse_args(argv)
    common = ["--python", args.python, "--no-progress", "--no-config"]
    doing = "resolving" if args.step == "resolve" else "building"
    print(f"nimbus: environment: {doing} as uid {os.getuid()}", flush=True)
    return resolve(args, common) if args.step == "resolve" else install(args, common)


if __name__ == "__main__":
    sys.exit(main())
