"""One control group per attempt: its limits enforced by the kernel, and all of it killed.

Which directories and which limit files are pure decisions (:func:`find_hierarchies`,
:func:`attempt_dirs`, :func:`limit_files`, :func:`oom_kills`); :class:`AttemptCgroup`
does the writes. Two layouts are supported:

- **cgroup v2** (``/sys/fs/cgroup`` is cgroup2 with the ``memory``, ``pids`` and ``cpu``
  controllers): one directory per attempt holds every limit, and ``cgroup.kill`` ends
  every process in it at once, escapees included.
- **hybrid** (cgroup v1 ``memory``, ``pids`` and ``cpu`` hierarchies, plus a cgroup2
  hierarchy at ``/sys/fs/cgroup/unified`` with ``cgroup.kill`` but no controllers): one
  directory per attempt in each v1 hierarchy for the limits, one in the unified
  hierarchy for the kill. Without a writable unified hierarchy the kill is a loop over the
  v1 ``cgroup.procs`` (SIGKILL everything listed until it is empty).

Attempt cgroups are made below the server's own cgroup in each hierarchy (read from
``/proc/self/cgroup``), in a ``nimbus-<instance id>`` directory, so they count against whatever
limits the server itself runs under. Where no hierarchy is writable, nothing is enforced:
:func:`find_hierarchies` says so and the sandbox refuses to start (see
:mod:`nimbus.jobs.sandbox`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from nimbus.jobs.domain import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
SWAP_FILES = ("memory.swap.max", "memory.memsw.limit_in_bytes")
# Written where the kernel has them (Linux >= 5.14), skipped where it has not.
BURST_FILES = ("cpu.max.burst", "cpu.cfs_burst_us")
OPTIONAL_FILES = SWAP_FILES + BURST_FILES
# The scheduling weight of one busy thread: cgroup v2 ``cpu.weight`` and v1 ``cpu.shares``
# (the default of a cgroup, and of a task at nice 0), and each one's upper bound.
WEIGHT_PER_CPU = {2: 100, 1: 1024}
MAX_WEIGHT = {2: 10_000, 1: 262_144}


def cpu_weight(version: int, cpus: float) -> int:
    """The scheduling weight of a cgroup whose processes may keep ``cpus`` CPUs busy.

    The kernel weighs a cgroup as it weighs one task: left at the default, an attempt
    that runs N threads gets, on a contended machine, what one thread of a process
    outside gets, while that process's N threads get N shares. Weighted by its CPUs, the
    attempt competes as N busy threads would (its quota still caps it at N CPUs).
    """
    weight = round(WEIGHT_PER_CPU[version] * cpus)
    return max(1 if version == 2 else 2, min(MAX_WEIGHT[version], weight))


@dataclass(frozen=True)
class Hierarchy:
    """A cgroup hierarchy attempts get a directory in: its version, where the server's
    cgroup is in it, and which of ``memory``, ``pids``, ``cpu`` it controls."""

    version: int
    base: Path  # the directory attempt cgroups are created under
    controllers: frozenset[str]
    killable: bool = False  # has cgroup.kill (cgroup2)


def parse_self_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the cgroup2 entry under ``""``."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
        for name in controllers.split(","):
            if name:
                found[name] = path
    return found


def find_hierarchies(
    self_cgroup: str, root: Path, entries: Mapping[str, frozenset[str]], group: str
) -> list[Hierarchy]:
    """Where attempt cgroups go, from ``/proc/self/cgroup`` and what is mounted.

    ``entries`` maps each directory below ``root`` (``""`` for ``root`` itself) that is a
    cgroup mount to the files or controllers found there: ``{"memory": {"memory"},
    "unified": {"cgroup.kill"}, ...}`` for the hybrid layout, ``{"": {"cgroup.kill",
    "memory", "pids", "cpu"}}`` for pure cgroup v2 (controllers as listed in
    ``cgroup.controllers``). Pure: the caller probes the file system.
    """
    mine = parse_self_cgroup(self_cgroup)
    found: list[Hierarchy] = []
    here = group
    if "" in entries and "cgroup.kill" in entries[""]:  # pure cgroup v2
        controllers = frozenset(entries[""]) & frozenset(CONTROLLERS)
        base = root / mine.get("", "/").lstrip("/") / here
        return [Hierarchy(2, base, controllers, killable=True)]
    for name in CONTROLLERS:
        if name in entries and name in mine:
            base = root / name / mine[name].lstrip("/") / here
            found.append(Hierarchy(1, base, frozenset({name})))
    if "unified" in entries and "cgroup.kill" in entries["unified"]:
        base = root / "unified" / mine.get("", "/").lstrip("/") / here
        found.append(Hierarchy(2, base, frozenset(), killable=True))
    return found


def missing(hierarchies: list[Hierarchy]) -> list[str]:
    """What cannot be enforced with ``hierarchies``: controllers absent, no kill of the
    whole group."""
    have = set().union(*(h.controllers for h in hierarchies)) if hierarchies else set()
    return [f"no writable {name} controller" for name in CONTROLLERS if name not in have]


def swap_unlimited(hierarchies: list[Hierarchy], swaps: str) -> str | None:
    """What to report when the machine swaps (``swaps``: ``/proc/swaps``) but an
    attempt's swap cannot be capped: under cgroup v1 without ``memory.memsw.*`` (swap
    accounting off: a kernel built without it, or booted with ``swapaccount=0``), a job
    stays at ``--memory`` in RAM but may push the rest to swap, without bound."""
    if len(swaps.strip().splitlines()) <= 1:
        return None  # no swap: nothing beyond --memory to go to
    for h in hierarchies:
        if "memory" in h.controllers:
            name = "memory.swap.max" if h.version == 2 else "memory.memsw.limit_in_bytes"
            if not (h.base / name).exists():
                return f"swap beyond --memory (no {name}: boot with swapaccount=1)"
    return None


def limit_files(
    version: int,
    controllers: frozenset[str],
    resources: Resources,
    *,
    pids_per_worker: int,
    background: bool = False,
) -> dict[str, str]:
    """The limit files of one attempt's cgroup and what to write in them: memory
    (no swap beyond it), process count (threads included), CPU quota and scheduling
    weight (:func:`cpu_weight`), for all of the attempt's workers together.

    The quota may be spent in bursts of up to one period's worth saved from periods the
    attempt left part of unused (``*burst*``): its average stays at the quota, but a
    thread that wakes beside the busy ones (a checkpoint upload, the heartbeat) does not
    stall them all until the next period. ``background``: the lowest weight instead, for
    work that should only take CPU time that attempts leave idle (a warm sandbox's
    imports, before an attempt claims it)."""
    memory = resources.total_memory_bytes
    quota = max(1000, int(resources.total_cpus * CPU_PERIOD_US))
    pids = pids_per_worker * resources.workers
    files: dict[str, str] = {}
    if "memory" in controllers and memory > 0:
        if version == 2:
            files.update({"memory.max": str(memory), "memory.swap.max": "0"})
        else:  # memory first: memsw may not be set below it
            files["memory.limit_in_bytes"] = str(memory)
            files["memory.memsw.limit_in_bytes"] = str(memory)
    if "pids" in controllers:
        files["pids.max"] = str(pids)
    if "cpu" in controllers:
        weight = str(cpu_weight(version, 0 if background else resources.total_cpus))
        if version == 2:
            files["cpu.max"] = f"{quota} {CPU_PERIOD_US}"
            files.update({"cpu.max.burst": str(quota), "cpu.weight": weight})
        else:
            files.update({"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)})
            files.update({"cpu.cfs_burst_us": str(quota), "cpu.shares": weight})
    return files


def oom_kills(version: int, text: str) -> int:
    """OOM kills counted in ``memory.events`` (v2) or ``memory.oom_control`` (v1)."""
    key = "oom_kill"
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def probe(root: Path = CGROUP_ROOT) -> dict[str, frozenset[str]]:
    """What :func:`find_hierarchies` needs to know of ``root``: its cgroup mounts, with
    the controllers (v2) or the controller (v1) of each, and ``cgroup.kill`` where there."""
    entries: dict[str, frozenset[str]] = {}
    if (root / "cgroup.controllers").exists():
        names = set((root / "cgroup.controllers").read_text().split())
        if (root / "cgroup.kill").exists() or (root / "cgroup.procs").exists():
            names.add("cgroup.kill")
        entries[""] = frozenset(names)
        return entries
    for name in CONTROLLERS:
        if (root / name / "cgroup.procs").exists():
            entries[name] = frozenset({name})
    unified = root / "unified"
    if (unified / "cgroup.procs").exists():
        # cgroup.kill exists in every non-root cgroup2 directory since Linux 5.14; on an
        # older kernel the kill falls back to a loop over cgroup.procs.
        entries["unified"] = frozenset({"cgroup.kill"})
    return entries


def writable(hierarchies: list[Hierarchy]) -> list[Hierarchy]:
    """The hierarchies whose attempt base directory this process can create.

    The base directory holds every attempt of the server: with the ``cpu`` controller it
    is weighted as every CPU of the machine busy (:func:`cpu_weight`), else all attempts
    together would weigh as one thread outside it."""
    usable = []
    for h in hierarchies:
        try:
            h.base.mkdir(exist_ok=True)
        except OSError:
            continue
        if "cpu" in h.controllers:
            name = "cpu.weight" if h.version == 2 else "cpu.shares"
            with contextlib.suppress(OSError):
                (h.base / name).write_text(str(cpu_weight(h.version, os.cpu_count() or 1)))
        if h.version == 2 and h.controllers:
            h = replace(h, controllers=hand_down(h.base, h.controllers))
        usable.append(h)
    return usable


def hand_down(base: Path, controllers: frozenset[str]) -> frozenset[str]:
    """Enables ``controllers`` for the cgroups below ``base`` (cgroup v2); returns those
    enabled there. The mount lists what its root has: the server's own cgroup may have
    fewer (a parent that delegated none; a cgroup with processes of its own, which cannot
    hand controllers down), and an attempt's limits then go unwritten, said at start,
    rather than fail every attempt's start."""
    control = base / "cgroup.subtree_control"
    with contextlib.suppress(OSError):
        control.write_text(" ".join(f"+{c}" for c in sorted(controllers)))
    try:
        enabled = {name.lstrip("+") for name in control.read_text().split()}
    except OSError:
        return frozenset()
    return controllers & frozenset(enabled)


class AttemptCgroup:
    """One attempt's cgroup directories (one per hierarchy): created with its limits,
    joined by the attempt's processes before they exec, killed and removed at its end."""

    def __init__(self, hierarchies: list[Hierarchy], name: str) -> None:
        self.hierarchies = hierarchies
        self.dirs = [h.base / name for h in hierarchies]
        self.oom_base = 0  # kills counted before: an earlier attempt's (a reused sandbox)

    def child(self, name: str) -> AttemptCgroup:
        """A cgroup below this one, without limits of its own (this one's hold it too):
        what is killed apart from the rest, such as one attempt's processes in a sandbox
        that outlives it. Made by :meth:`make`, joined by :meth:`join`."""
        sub = AttemptCgroup(self.hierarchies, name)
        sub.dirs = [d / name for d in self.dirs]
        return sub

    def make(self) -> None:
        for directory in self.dirs:
            directory.mkdir(exist_ok=True)

    def join(self, pid: int) -> None:
        """Move process ``pid`` here (its children forked from then on are born here)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(pid))

    def create(
        self, resources: Resources, *, pids_per_worker: int, background: bool = False
    ) -> None:
        """Make the directories and write the limits (see :func:`limit_files`); OSError if
        a limit cannot be set. Called again, it writes the new limits."""
        writable(self.hierarchies)  # the bases, again: a previous close removed them
        for h, directory in zip(self.hierarchies, self.dirs, strict=True):
            directory.mkdir(exist_ok=True)
            files = limit_files(
                h.version,
                h.controllers,
                resources,
                pids_per_worker=pids_per_worker,
                background=background,
            )
            for file, value in files.items():
                if file in OPTIONAL_FILES and not (directory / file).exists():
                    continue  # swap accounting off (see swap_unlimited()), or no burst
                (directory / file).write_text(value)

    def reweigh(self, cpus: float) -> None:
        """Write the scheduling weight of ``cpus`` CPUs (:func:`cpu_weight`) where the
        cgroup exists; nothing where it does not (yet, or any more)."""
        for h, directory in zip(self.hierarchies, self.dirs, strict=True):
            if "cpu" in h.controllers:
                name = "cpu.weight" if h.version == 2 else "cpu.shares"
                with contextlib.suppress(OSError):
                    (directory / name).write_text(str(cpu_weight(h.version, cpus)))

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """Its processes, those of the cgroups below it included."""
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                for procs in [directory / "cgroup.procs", *directory.glob("*/cgroup.procs")]:
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def memory_usage(self) -> int:
        """Bytes of memory charged to the cgroup now (0 without a memory controller)."""
        for h, directory in zip(self.hierarchies, self.dirs, strict=True):
            if "memory" in h.controllers:
                name = "memory.current" if h.version == 2 else "memory.usage_in_bytes"
                with contextlib.suppress(OSError, ValueError):
                    return int((directory / name).read_text())
        return 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the attempt for exceeding its memory
        (since :attr:`oom_base` was taken)."""
        return self.oom_count() > self.oom_base

    def oom_count(self) -> int:
        """How many processes the kernel killed here for exceeding its memory, so far."""
        for h, directory in zip(self.hierarchies, self.dirs, strict=True):
            if "memory" not in h.controllers:
                continue
            if h.version == 2:  # its memory.events counts those of the cgroups below too
                with contextlib.suppress(OSError):
                    return oom_kills(2, (directory / "memory.events").read_text())
                continue
            # v1 counts a kill in the killed process's own cgroup only.
            counts = []
            for file in [directory / "memory.oom_control", *directory.glob("*/memory.oom_control")]:
                with contextlib.suppress(OSError):
                    counts.append(oom_kills(1, file.read_text()))
            if counts:
                return sum(counts)
        return 0

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process of the attempt, however it left its session or group."""
        for h, directory in zip(self.hierarchies, self.dirs, strict=True):
            if h.killable:
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:  # v1 only, or a fork racing the kill
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        """Kill what is left, then remove the directories (those below first)."""
        self.kill()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                for below in [p for p in directory.iterdir() if p.is_dir()]:
                    _rmdir(below)
            _rmdir(directory)


def _rmdir(directory: Path) -> None:
    """Remove an emptied cgroup directory (its killed processes leave it a moment later)."""
    for _ in range(100):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
