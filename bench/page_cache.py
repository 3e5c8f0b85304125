"""What writing 1 GiB into the page cache costs this machine, again and again: the noise
under every storage figure (bench/storage.py). Prints figures, asserts nothing.

Each round writes a new 1 GiB file (the previous one deleted, the disk synced first) two
ways: in order from one thread (as ``cp``), and as 8 MiB ranges from 8 threads at their
offsets in a file sized first (as ranged downloads do, boto3's and Nimbus's). The kernel
time of the same write varies several-fold from round to round on a virtual machine: pages
the guest freed long ago may have been handed back to the host, and touching them again
faults them in. Which case gets such pages depends on what ran before it, not on the case.

Run: ``.venv/bin/python bench/page_cache.py [--rounds 5] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIZE = 1 << 30
CHUNK = 1 << 20
RANGE = 8 << 20


def write(path: Path, ranged: bool, chunk: bytes) -> tuple[float, float]:
    """Write SIZE bytes to a new ``path``; (wall seconds, kernel CPU seconds)."""
    path.unlink(missing_ok=True)
    os.sync()
    began, before = time.perf_counter(), os.times()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if ranged:
            os.ftruncate(fd, SIZE)

            def one(lo: int) -> None:
                for offset in range(lo, lo + RANGE, CHUNK):
                    os.pwrite(fd, chunk, offset)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(0, SIZE, RANGE)))
        else:
            for offset in range(0, SIZE, CHUNK):
                os.pwrite(fd, chunk, offset)
    finally:
        os.close(fd)
    after = os.times()
    return time.perf_counter() - began, after.system - before.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    chunk = os.urandom(CHUNK)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        figures: dict[str, list[tuple[float, float]]] = {"in order": [], "8 threads": []}
        for _ in range(args.rounds):
            figures["in order"].append(write(Path(work) / "ordered", False, chunk))
            figures["8 threads"].append(write(Path(work) / "ranged", True, chunk))
            (Path(work) / "ordered").unlink()
            (Path(work) / "ranged").unlink()
    print(f"1 GiB into the page cache, {args.rounds} rounds (wall s / kernel CPU s each)")
    for case, runs in figures.items():
        each = "  ".join(f"{wall:.2f}/{system:.2f}" for wall, system in runs)
        median = statistics.median(system for _, system in runs)
        print(f"  {case:<10} {each}   kernel CPU median {median:.2f} s")


if __name__ == "__main__":
    main()
