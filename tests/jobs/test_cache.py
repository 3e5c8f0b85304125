"""The jobs' download caches kept under a size (nimbus.jobs.cache): the pure plan, the
sweep over real files (symlinks never followed), and the sweep a real server runs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from nimbus.jobs.cache import CachedFile, cache_sweeper, plan_eviction, scan, sweep
from tests.helpers import ServerProcess

NOW = 1_000_000.0


def blob(root: Path, tenant: str, data: bytes, used: float) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    path = root / tenant / "sha256" / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_name(digest + ".lock").touch()
    os.utime(path, (used, used))
    return path


def cached(name: str, size: int, used: float) -> CachedFile:
    return CachedFile(("t", "sha256", "ab", name), size, used)


def test_the_plan_takes_the_least_recently_used_until_the_rest_fits() -> None:
    files = [
        cached("a" * 64, 100, NOW - 500),
        cached("b" * 64, 100, NOW - 300),
        cached("c" * 64, 100, NOW - 400),
        cached("d" * 64, 100, NOW - 10),  # within the grace period: kept
    ]
    plan = plan_eviction(files, 150, now=NOW, grace_seconds=60)
    assert [f.parts[-1][0] for f in plan] == ["a", "c", "b"]
    assert plan_eviction(files, 400, now=NOW, grace_seconds=60) == []
    partial = CachedFile(("t", ".x.1.tmp"), 5, NOW - 2 * 86400)
    assert plan_eviction([partial], 10**9, now=NOW, grace_seconds=60) == [partial]


def test_a_sweep_removes_old_blobs_and_never_follows_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    old = blob(root, "t1", b"o" * 1000, NOW - 900)
    mid = blob(root, "t2", b"m" * 1000, NOW - 600)
    new = blob(root, "t1", b"n" * 1000, NOW - 300)
    outside = tmp_path / "outside" / "sha256" / "ab"
    outside.mkdir(parents=True)
    precious = outside / ("a" * 64)
    precious.write_bytes(b"p" * 5000)
    os.utime(precious, (1, 1))
    (root / "t3").symlink_to(tmp_path / "outside")  # a job's trap for a root sweeper
    assert sum(f.size for f in scan(root)) == 3000

    result = sweep(root, 1500, now=NOW, grace_seconds=60)
    assert (result.removed, result.freed_bytes, result.total_bytes) == (2, 2000, 3000)
    assert not old.exists() and not old.with_name(old.name + ".lock").exists()
    assert not mid.exists() and new.exists() and precious.exists()
    assert sweep(root, 1500, now=NOW).removed == 0


def test_the_server_sweeps_the_caches_to_their_limit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"NIMBUS_CACHE_MAX_BYTES": "2500", "NIMBUS_CACHE_SWEEP_SECONDS": "0.2"}
    server = ServerProcess(home, env={**env, "NIMBUS_EXECUTOR_PRELOAD": "[]"}).start()
    try:
        root = home / "cache"
        past = time.time() - 3600
        files = [blob(root, "tenant", bytes([i]) * 1000, past + i) for i in range(4)]
        deadline = time.monotonic() + 30
        while files[1].exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [f.exists() for f in files] == [False, False, True, True]
    finally:
        server.stop()


def test_the_sweeper_thread_starts_and_stops(tmp_path: Path) -> None:
    calls: list[tuple[Path, int]] = []

    def fake(root: Path, limit: int) -> object:
        calls.append((root, limit))
        raise OSError("a failing sweep is logged, not fatal")

    sweeper = cache_sweeper(tmp_path, 7, 0.01, sweep_fn=fake)  # type: ignore[arg-type]
    sweeper.start()
    time.sleep(0.1)
    sweeper.stop()
    assert len(calls) >= 2 and calls[0] == (tmp_path, 7)
