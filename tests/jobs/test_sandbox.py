"""The sandbox's pure decisions: the bwrap command line, the launcher, uids, cgroup paths
and limits. Plain inputs, no processes."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from nimbus.jobs import cgroups, seccomp
from nimbus.jobs.domain import Resources
from nimbus.jobs.sandbox import (
    JOB_API_DIR,
    JOB_API_URL,
    AttemptView,
    SandboxSettings,
    UidPool,
    bwrap_argv,
    covering,
    launcher_argv,
    over_disk_limit,
    purge_workdirs,
)

SETTINGS = SandboxSettings(
    bwrap="/usr/bin/bwrap",
    home=Path("/srv/nimbus"),
    read_only=("/usr", "/etc", "/opt/venv"),
    symlinks=(("/bin", "usr/bin"),),
    uid_first=5_000_000,
    uid_count=100,
    disk_limit_bytes=1024**3,
)
VIEW = AttemptView(5_000_007, 5_000_101, Path("/srv/nimbus/jobs/j/a"), Path("/srv/nimbus/cache/t"))


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv) if arg == flag]


def test_bwrap_argv_namespaces_uid_and_view() -> None:
    argv = bwrap_argv(SETTINGS, VIEW, ["python", "-m", "job"])
    assert argv[0] == "/usr/bin/bwrap" and argv[-4:] == ["--", "python", "-m", "job"]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--share-net" not in argv  # a network namespace of its own: loopback only
    assert argv[argv.index("--uid") + 1] == "5000007"
    assert argv[argv.index("--gid") + 1] == "5000101"
    assert pairs(argv, "--ro-bind") == [(p, p) for p in SETTINGS.read_only]
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin")]
    workdir, cache = str(VIEW.workdir), str(VIEW.cache_dir)
    # Nothing else read-write; /tmp is in the work directory, counted with it.
    tmp = f"{workdir}/.tmp"
    assert pairs(argv, "--bind") == [(tmp, "/tmp"), (workdir, workdir), (cache, cache)]
    assert ["--size", str(1024**3), "--tmpfs", "/dev/shm"] == argv[
        argv.index("/dev/shm") - 3 : argv.index("/dev/shm") + 1
    ]
    assert "--seccomp" not in argv
    filtered = bwrap_argv(SETTINGS, VIEW, ["true"], seccomp_fd=7)
    assert filtered[filtered.index("--seccomp") + 1] == "7"
    assert argv[argv.index("--chdir") + 1] == workdir
    assert "/srv/nimbus" not in [a for a, _ in pairs(argv, "--ro-bind")]


def test_a_home_inside_a_read_only_view_is_hidden_under_a_tmpfs() -> None:
    inside = SandboxSettings(bwrap="bwrap", home=Path("/opt/venv/home"), read_only=("/opt",))
    view = AttemptView(1, 2, Path("/opt/venv/home/jobs/j/a"))
    argv = bwrap_argv(inside, view, ["true"])
    hidden = argv.index("/opt/venv/home")
    assert argv[hidden - 1] == "--tmpfs" and hidden < argv.index(str(view.workdir))
    assert "--tmpfs" not in bwrap_argv(SETTINGS, VIEW, ["true"])[:10]


def test_gpus_are_bound_only_when_asked_for() -> None:
    view = AttemptView(1, 2, Path("/w"), devices=("/dev/nvidia0", "/dev/nvidiactl"))
    assert pairs(bwrap_argv(SETTINGS, view, ["true"]), "--dev-bind") == [
        ("/dev/nvidia0", "/dev/nvidia0"),
        ("/dev/nvidiactl", "/dev/nvidiactl"),
    ]
    assert "--dev-bind" not in bwrap_argv(SETTINGS, VIEW, ["true"])


def test_the_network_is_the_sandboxs_own_or_the_attempts_shared_one() -> None:
    api = SandboxSettings(bwrap="bwrap", home=Path("/h"), read_only=(), job_api_dir=Path("/h/run"))
    alone = bwrap_argv(api, VIEW, ["true"])
    assert "--share-net" not in alone
    assert ("/h/run", JOB_API_DIR) in pairs(alone, "--ro-bind")  # the socket, read-only
    assert JOB_API_URL.startswith("unix:" + JOB_API_DIR + "/")
    shared = AttemptView(1, 2, Path("/w"), netns="/proc/9/ns/net")
    assert "--share-net" in bwrap_argv(api, shared, ["true"])  # the namespace entered
    host = dataclasses.replace(api, host_network=True)  # a worker of several on Ray
    assert "--share-net" in bwrap_argv(host, VIEW, ["true"])
    assert ("/h/run", JOB_API_DIR) in pairs(bwrap_argv(host, VIEW, ["true"]), "--ro-bind")
    launcher = launcher_argv([], 1024, 7, 8, ["bwrap"], netns="/proc/9/ns/net")
    enter = next(i for i, arg in enumerate(launcher) if arg.endswith("nsenter"))
    assert launcher[enter + 1] == "--net=/proc/9/ns/net"
    assert enter < next(i for i, arg in enumerate(launcher) if arg.endswith("setpriv"))
    assert not any(arg.endswith("nsenter") for arg in launcher_argv([], 1024, 7, 8, ["bwrap"]))


def test_the_launcher_joins_cgroups_caps_files_then_drops_before_bwrap() -> None:
    argv = launcher_argv(["/cg/a/cgroup.procs", "/cg/b/cgroup.procs"], 1024**3, 7, 8, ["bwrap"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:8] == [
        "sh",
        str(1024**3 // 512),
        "/cg/a/cgroup.procs",
        "/cg/b/cgroup.procs",
        "--",
    ]
    setpriv = argv[8:]
    assert setpriv[0].endswith("setpriv") and setpriv[-1] == "bwrap"
    assert {"--reuid=7", "--regid=8", "--clear-groups", "--inh-caps=-all"} <= set(setpriv)


def test_covering_keeps_existing_outermost_paths(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    found = covering(
        [str(tmp_path / "a" / "b"), str(tmp_path / "a"), "relative", str(tmp_path / "missing")]
    )
    assert found == (str(tmp_path / "a"),)
    assert covering([str(tmp_path / "link")]) == (str(tmp_path / "a"),)


def test_uids_are_unique_while_held_and_not_reused_at_once() -> None:
    pool = UidPool(100, 3)
    a, b, c = pool.acquire(), pool.acquire(), pool.acquire()
    assert sorted((a, b, c)) == [100, 101, 102]
    with pytest.raises(RuntimeError):
        pool.acquire()
    pool.release(a)
    assert pool.acquire() == a
    pool = UidPool(100, 3)
    first = pool.acquire()
    pool.release(first)
    assert pool.acquire() != first  # the next uid, not the one just freed


def test_tenant_gids_sit_after_the_uid_range() -> None:
    assert SETTINGS.tenant_gid(None) == 5_000_100
    assert SETTINGS.tenant_gid(7) == 5_000_107
    assert SETTINGS.tenant_gid(7) >= SETTINGS.uid_first + SETTINGS.uid_count


def test_disk_limit_decisions() -> None:
    assert not over_disk_limit((10, 10), 100)
    assert over_disk_limit((100, 10), 100)  # many files
    assert over_disk_limit((10, 100), 100)  # one file stopped at RLIMIT_FSIZE


def test_purging_old_workdirs(tmp_path: Path) -> None:
    old, new = tmp_path / "job1" / "att1", tmp_path / "job2" / "att2"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    (old / "f").write_text("x")
    past = time.time() - 100
    os.utime(old, (past, past))
    os.utime(old.parent, (past, past))
    assert purge_workdirs(tmp_path, 50) == [old]
    assert not old.exists() and new.exists()


HYBRID = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
"""


def test_hierarchies_on_the_hybrid_layout() -> None:
    entries = {
        "memory": frozenset({"memory"}),
        "pids": frozenset({"pids"}),
        "cpu": frozenset({"cpu"}),
        "unified": frozenset({"cgroup.kill"}),
    }
    found = cgroups.find_hierarchies(HYBRID, Path("/cg"), entries, group="nimbus-n1")
    assert [(h.version, h.base, h.controllers, h.killable) for h in found] == [
        (1, Path("/cg/memory/process_api/abc/nimbus-n1"), frozenset({"memory"}), False),
        (1, Path("/cg/pids/nimbus-n1"), frozenset({"pids"}), False),
        (1, Path("/cg/cpu/nimbus-n1"), frozenset({"cpu"}), False),
        (2, Path("/cg/unified/nimbus-n1"), frozenset(), True),
    ]
    assert cgroups.missing(found) == []


def test_hierarchies_on_pure_cgroup_v2() -> None:
    entries = {"": frozenset({"cgroup.kill", "memory", "pids", "cpu", "io"})}
    found = cgroups.find_hierarchies("0::/system.slice/nimbus.service\n", Path("/cg"), entries, "g")
    assert found == [
        cgroups.Hierarchy(
            2, Path("/cg/system.slice/nimbus.service/g"), frozenset({"memory", "pids", "cpu"}), True
        )
    ]


def test_controllers_the_servers_cgroup_cannot_hand_down_are_not_claimed(tmp_path: Path) -> None:
    """As on a machine whose cgroup v2 mount has every controller but the server's own
    cgroup delegates none (seen on a GPU machine: each attempt's start then failed writing
    memory.max): the base keeps cgroup.kill, the limits degrade, and that is said."""
    all_three = frozenset({"memory", "pids", "cpu"})
    refusing = tmp_path / "refusing"
    (refusing / "cgroup.subtree_control").mkdir(parents=True)  # neither written nor read
    [found] = cgroups.writable([cgroups.Hierarchy(2, refusing, all_three, True)])
    assert found == cgroups.Hierarchy(2, refusing, frozenset(), True)
    assert len(cgroups.missing([found])) == 3
    # The kernel lists what it enabled, less what it could not: only those are claimed.
    partial = tmp_path / "partial"
    partial.mkdir()
    assert cgroups.hand_down(partial, all_three) == all_three  # read back as written
    (partial / "cgroup.subtree_control").unlink()
    (partial / "cgroup.subtree_control").mkdir()
    assert cgroups.hand_down(partial, all_three) == frozenset()


def test_what_degrades_without_controllers() -> None:
    assert cgroups.missing([]) == [
        "no writable memory controller",
        "no writable pids controller",
        "no writable cpu controller",
    ]
    only_kill = [cgroups.Hierarchy(2, Path("/x"), frozenset(), True)]
    assert len(cgroups.missing(only_kill)) == 3


def test_limit_files_for_both_versions() -> None:
    res = Resources(cpus=1.5, memory_bytes=512 * 2**20, workers=2)
    every = frozenset(cgroups.CONTROLLERS)
    assert cgroups.limit_files(2, every, res, pids_per_worker=100) == {
        "memory.max": str(2**30),
        "memory.swap.max": "0",
        "pids.max": "200",
        "cpu.max": "300000 100000",
        "cpu.max.burst": "300000",
        "cpu.weight": "300",  # three busy threads' worth
    }
    assert cgroups.limit_files(1, every, res, pids_per_worker=100) == {
        "memory.limit_in_bytes": str(2**30),
        "memory.memsw.limit_in_bytes": str(2**30),  # no swap beyond it
        "pids.max": "200",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "300000",
        "cpu.cfs_burst_us": "300000",
        "cpu.shares": "3072",
    }
    unlimited = Resources(memory_bytes=0)
    assert "memory.max" not in cgroups.limit_files(2, every, unlimited, pids_per_worker=1)


def test_cpu_weight_counts_busy_threads_within_the_kernel_bounds() -> None:
    assert cgroups.cpu_weight(1, 1) == 1024  # the default: one task at nice 0
    assert cgroups.cpu_weight(2, 1) == 100
    assert cgroups.cpu_weight(1, 0.5) == 512
    assert cgroups.cpu_weight(2, 0.001) == 1 and cgroups.cpu_weight(1, 0.0001) == 2
    assert cgroups.cpu_weight(2, 1000) == 10_000 and cgroups.cpu_weight(1, 1000) == 262_144


def test_oom_kills_are_read_from_either_file() -> None:
    assert cgroups.oom_kills(2, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n") == 1
    assert cgroups.oom_kills(1, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == 2
    assert cgroups.oom_kills(1, "oom_kill_disable 0\n") == 0


def test_swap_that_cannot_be_capped_is_reported(tmp_path: Path) -> None:
    v1 = cgroups.Hierarchy(1, tmp_path, frozenset({"memory"}))
    swaps = "Filename Type Size Used Priority\n/swapfile file 1048572 0 -2\n"
    assert cgroups.swap_unlimited([v1], "Filename Type Size Used Priority\n") is None
    assert "memory.memsw.limit_in_bytes" in str(cgroups.swap_unlimited([v1], swaps))
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("max")
    assert cgroups.swap_unlimited([v1], swaps) is None


def test_the_seccomp_filter_is_whole_bpf_instructions() -> None:
    code = seccomp.program()
    assert len(code) % 8 == 0 and 0 < len(code) // 8 < 256
