"""Import time and memory of the processes Nimbus starts, on this tree against a baseline tree.

    python bench/imports.py [--before SRC] [--runs N]

``--before`` is the ``src`` directory of another checkout, for instance
``git worktree add /tmp/before 6e62b4d`` then ``--before /tmp/before/src`` (the default,
when it exists). Both trees run with this virtualenv's interpreter; each measured process is
a fresh interpreter with ``PYTHONPATH`` set to its tree.

Figures (medians of ``--runs``, 5 by default):

- import time: ``python -X importtime -c "import M"``, the cumulative time of ``M`` itself,
  and how many modules the interpreter holds afterwards;
- replica RSS: a real replica process (``python -m ...replica --public --port P``) serving
  the seed CNN with ONNX Runtime, once it is ready and quiet;
- control plane RSS: ``python -m nimbus.server`` once it answers and is quiet (its own
  process: the fork server child, which preloads torch, is left out).

Not a test: it prints a table with ratios (after / before) and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, ServerProcess, median, rss_of, wait_quiet
from serve import build_model_dir
from tests.helpers import wait_http

from nimbus.system import free_port

AFTER = ROOT / "src"
DEFAULT_BEFORE = Path("/tmp/before/src")


@dataclass(frozen=True)
class Tree:
    """A source tree and where its modules are (names changed between trees)."""

    label: str
    src: Path

    def has(self, module: str) -> bool:
        relative = Path(*module.split("."))
        return (self.src / relative).with_suffix(".py").exists() or (
            self.src / relative / "__init__.py"
        ).exists()

    def pick(self, *candidates: str) -> str:
        """The first module name of ``candidates`` that exists in this tree."""
        for module in candidates:
            if self.has(module):
                return module
        raise LookupError(f"none of {candidates} in {self.src}")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env["PYTHONPATH"] = str(self.src)
        return env


# What a process of each kind imports first; names before the module renames come second.
IMPORTS: dict[str, tuple[str, ...]] = {
    "nimbus (the package face)": ("nimbus",),
    "model spec (control plane)": ("nimbus.modelformat.spec", "nimbus.serving.spec"),
    "replica": ("nimbus.serving.fleet.replica", "nimbus.serving.replica"),
    "control plane": ("nimbus.server",),
    "CLI": ("nimbus.cli.app",),
}
_IMPORTTIME = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)\s*$")


def import_figures(tree: Tree, module: str) -> tuple[float, int]:
    """Seconds ``import module`` takes (its cumulative -X importtime) and modules loaded."""
    code = f"import sys; import {module}; print(len(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=tree.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative = [
        int(m.group(1))
        for line in done.stderr.splitlines()
        if (m := _IMPORTTIME.match(line)) and m.group(2) == module
    ]
    return cumulative[-1] / 1e6, int(done.stdout.split()[-1])


def replica_rss(tree: Tree, model_dir: Path) -> int:
    """RSS of one replica serving ``model_dir``, once ready and quiet."""
    port = free_port()
    module = tree.pick(*IMPORTS["replica"])
    argv = [sys.executable, "-m", module, "--model-dir", str(model_dir), "--name", "cnn"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--public"],
        env=tree.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 60, proc)
        wait_quiet(proc.pid)
        return rss_of(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def control_plane_rss(tree: Tree, home: Path) -> int:
    """RSS of the control plane's own process at idle (started, executor warm, quiet)."""
    with ServerProcess(home, env={"PYTHONPATH": str(tree.src)}) as server:
        assert server.proc is not None
        time.sleep(1.0)  # the scheduler thread starts the fork server right after start-up
        wait_quiet(server.proc.pid)
        return rss_of(server.proc.pid)


def medians(runs: int, measure: Callable[[], float]) -> float:
    return median([measure() for _ in range(runs)])


def row(name: str, unit: str, before: float | None, after: float) -> str:
    scale = {"ms": 1e3, "MiB": 1 / 2**20, "": 1.0}[unit]
    if before is None:
        return f"{name:<40} {'-':>12} {after * scale:>10.1f} {unit:<4} {'-':>7}"
    ratio = after / before if before else float("nan")
    return f"{name:<40} {before * scale:>12.1f} {after * scale:>10.1f} {unit:<4} {ratio:>6.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=DEFAULT_BEFORE, help="baseline src dir")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    after = Tree("after", AFTER)
    before = Tree("before", args.before) if (args.before / "nimbus").is_dir() else None
    if before is None:
        print(f"no baseline tree at {args.before}: printing this tree's figures only")
    trees = [t for t in (before, after) if t is not None]

    print(f"{'':<40} {'before':>12} {'after':>10} {'':<4} {'ratio':>7}")
    for name, candidates in IMPORTS.items():
        time_of: dict[str, float] = {}
        count_of: dict[str, float] = {}
        for tree in trees:
            module = tree.pick(*candidates)
            figures = [import_figures(tree, module) for _ in range(args.runs)]
            time_of[tree.label] = median([seconds for seconds, _ in figures])
            count_of[tree.label] = median([float(count) for _, count in figures])
        print(row(f"import {name}", "ms", time_of.get("before"), time_of["after"]))
        print(row("  modules loaded", "", count_of.get("before"), count_of["after"]))

    with tempfile.TemporaryDirectory(prefix="nimbus-bench-imports-") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        rss = {
            tree.label: medians(min(args.runs, 3), lambda tree=tree: replica_rss(tree, model_dir))
            for tree in trees
        }
        print(row("replica RSS (serving the seed CNN)", "MiB", rss.get("before"), rss["after"]))
        homes = iter(range(100))
        rss = {
            tree.label: medians(
                min(args.runs, 3),
                lambda tree=tree: control_plane_rss(tree, Path(tmp) / f"home-{next(homes)}"),
            )
            for tree in trees
        }
        print(row("control plane RSS at idle", "MiB", rss.get("before"), rss["after"]))


if __name__ == "__main__":
    main()
