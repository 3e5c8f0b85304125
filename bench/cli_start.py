"""The ``nimbus`` command's start: CPU and wall time of short commands, on this tree against a
baseline tree, interleaved.

    python bench/cli_start.py [--before SRC] [--runs N]

``--before`` is the ``src`` directory of another checkout (for instance ``git archive
HEAD~1 | tar -x -C /tmp/before`` then ``--before /tmp/before/src``, the default). Both trees
run with this virtualenv's ``nimbus`` script and ``PYTHONPATH`` set to the tree, byte-compiled
first (as an installed package is: without it each start would compile Nimbus's sources).
One server from this tree answers both (an upload of a small dataset first, so that
``datasets list`` and ``datasets download`` have something to show).

Figures: per command and tree, the median over ``--runs`` (9 by default) of the process's
CPU (user + system, from the children's rusage) and wall time; ratio after / before.
Not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, ServerProcess, median

NIMBUS = str(Path(sys.executable).parent / "nimbus")
COMMANDS: list[tuple[str, list[str]]] = [
    ("nimbus --help", ["--help"]),
    ("nimbus datasets --help", ["datasets", "--help"]),
    ("nimbus datasets list", ["datasets", "list"]),
    ("nimbus datasets list --json", ["datasets", "list", "--json"]),
    ("nimbus jobs list", ["jobs", "list"]),
    ("nimbus datasets download (1 kB)", ["datasets", "download", "tiny", "{out}"]),
]


def run_once(src: Path, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """CPU seconds and wall seconds of ``nimbus ARGV`` with ``src`` first on the path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [NIMBUS, *argv],
        env={**env, "PYTHONPATH": str(src)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"nimbus {' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def tiny_dataset(path: Path) -> Path:
    """A valid CSV dataset of a few rows (a kilobyte)."""
    rows = ["x,y,label"] + [f"{i % 7},{i % 5},{'ab'[i % 2]}" for i in range(60)]
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/before/src"))
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": (ROOT / "src").resolve()}
    for src in trees.values():
        if not (src / "nimbus" / "cli" / "app.py").exists():
            raise SystemExit(f"no nimbus sources under {src}")
        compileall.compile_dir(str(src), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "server-home").start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
            env.update(
                NIMBUS_URL=server.url,
                NIMBUS_TOKEN=server.admin_token,
                NIMBUS_HOME=str(work / "cli-home"),
                COLUMNS="100",
            )
            run_once(
                trees["after"],
                ["datasets", "upload", "tiny", str(tiny_dataset(work / "t.csv"))],
                env,
            )
            figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for index in range(args.runs):
                for label, argv in COMMANDS:
                    for tree, src in trees.items():
                        out = work / f"out-{tree}-{index}"
                        filled = [a.format(out=out) for a in argv]
                        figures.setdefault((label, tree), []).append(run_once(src, filled, env))
        finally:
            server.stop()
    load = os.getloadavg()
    print(f"medians of {args.runs} interleaved runs; load average now {load[0]:.1f}, {load[1]:.1f}")
    print(f"  before: {trees['before']}\n  after:  {trees['after']}")
    print(
        f"  {'command':34} {'CPU before':>10} {'after':>7} {'ratio':>6}   "
        f"{'wall before':>11} {'after':>7} {'ratio':>6}"
    )
    for label, _ in COMMANDS:
        b, a = figures[(label, "before")], figures[(label, "after")]
        cpu_b, cpu_a = median([c for c, _ in b]), median([c for c, _ in a])
        wall_b, wall_a = median([w for _, w in b]), median([w for _, w in a])
        print(
            f"  {label:34} {cpu_b * 1000:8.0f}ms {cpu_a * 1000:5.0f}ms {cpu_a / cpu_b:5.2f}x"
            f"   {wall_b * 1000:9.0f}ms {wall_a * 1000:5.0f}ms {wall_a / wall_b:5.2f}x"
        )


if __name__ == "__main__":
    main()
