"""Executor contract, run against every executor with real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from nimbus.errors import InvalidInput
from nimbus.jobs.domain import ExitReason
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.base import Executor, ExitStatus, Program
from nimbus.jobs.executors.local import LocalExecutor
from tests.jobs.conftest import Run, make, wait_gone

SPAWN_GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("grandchild", child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("print('ok')", ExitStatus(0), ExitReason.SUCCEEDED),
        ("import sys; sys.exit(3)", ExitStatus(3), ExitReason.USER_ERROR),
        ("raise RuntimeError('boom')", ExitStatus(1), ExitReason.EXIT_ERROR),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            ExitStatus(None, signal.SIGKILL),
            ExitReason.SIGNALED,
        ),
    ],
)
def test_exit_statuses(
    executor: Executor, code: str, status: ExitStatus, reason: ExitReason
) -> None:
    run = Run(executor, code)
    assert run.wait() == status
    assert status.outcome().reason is reason
    if status.exit_code == 1:
        assert "RuntimeError: boom" in run.output and "zygote" not in run.output


def test_module_programs_run_as_main_with_arguments(executor: Executor) -> None:
    entry = "import sys\nprint(__name__, sys.argv[1:])\nsys.exit(int(sys.argv[2]))\n"
    run = Run(
        executor,
        program=Program(module="entry_mod", args=("x", "3")),
        files={"entry_mod.py": entry},
    )
    assert run.wait() == ExitStatus(3)
    assert run.output == "__main__ ['x', '3']\n"


def test_a_preloaded_module_runs_as_main_without_a_warning(executor: Executor) -> None:
    """The fork server preloads the job entry module; running it must not make runpy warn
    ('found in sys.modules ... unpredictable behaviour') into every job's log."""
    run = Run(executor, program=Program(module="json.tool", args=("--help",)))
    assert run.wait() == ExitStatus(0)
    assert "usage:" in run.output and "Warning" not in run.output


def test_output_is_batched_in_order(executor: Executor) -> None:
    run = Run(executor, "import sys\nfor i in range(500): print(i)\nsys.stdout.write('tail')")
    assert run.wait().ok
    assert run.output == "".join(f"{i}\n" for i in range(500)) + "tail"
    assert len(run.chunks) < 50  # batched, not one chunk per line


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NIMBUS_DATABASE_URL",
        "NIMBUS_TOKEN",
        "NIMBUS_STORAGE_URL",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.setenv(name, "s3cr3t-value")
    code = (
        "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
        "'raw': open('/proc/self/environ', 'rb').read().decode()}))"
    )
    for kind_ in ("local", "forkserver"):
        executor = make(kind_, tmp_path / kind_)
        try:
            run = Run(executor, code)
            assert run.wait().ok, run.output
        finally:
            executor.close()
        seen = json.loads(run.output)
        assert "s3cr3t-value" not in run.output, kind_
        env = seen["env"]
        assert env["NIMBUS_JOB_TOKEN"] == "njt_secret" and env["NIMBUS_JOB_ID"] == "job_t"
        assert env["HOME"] == env["NIMBUS_JOB_DIR"] == seen["cwd"] == str(run.workdir)
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["PYTHONUNBUFFERED"] == "1"
        assert not {"NIMBUS_DATABASE_URL", "NIMBUS_TOKEN", "NIMBUS_STORAGE_URL"} & set(env)
        assert oct(run.workdir.stat().st_mode & 0o777) == "0o700"


def test_kill_takes_the_whole_process_group(executor: Executor) -> None:
    run = Run(executor, SPAWN_GRANDCHILD)
    grandchild = int(run.wait_output("grandchild").split()[1])
    executor.kill(run.handle)
    assert run.wait() == ExitStatus(None, signal.SIGTERM)
    assert wait_gone(grandchild)


def test_kill_escalates_to_sigkill_after_the_grace_period(executor: Executor) -> None:
    run = Run(
        executor,
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('armed', flush=True)\ntime.sleep(600)",
    )
    run.wait_output("armed")
    executor.kill(run.handle)
    assert run.wait() == ExitStatus(None, signal.SIGKILL)


def test_leftovers_of_a_finished_job_are_killed(executor: Executor) -> None:
    run = Run(
        executor,
        SPAWN_GRANDCHILD.replace("time.sleep(600)\n", "", 1).replace("time.sleep(600)", "pass"),
    )
    assert run.wait().ok
    assert wait_gone(int(run.output.split()[1]))


def test_workers_get_ranks_and_one_failure_stops_all(executor: Executor) -> None:
    code = (
        "import json, os; print(json.dumps({k: os.environ[k] for k in "
        "('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}))"
    )
    run = Run(executor, code, workers=2)
    assert run.wait().ok
    lines = sorted(run.output.splitlines())
    assert [line[:4] for line in lines] == ["[0] ", "[1] "]
    seen = [json.loads(line[4:]) for line in lines]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    failing = Run(
        executor,
        "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(600)",
        workers=3,
    )
    assert failing.wait() == ExitStatus(3)


def test_local_executor_reaps_orphans_of_a_crashed_run(tmp_path: Path) -> None:
    crashed = LocalExecutor(tmp_path / "jobs", grace_seconds=0.2)
    run = Run(crashed, SPAWN_GRANDCHILD)
    grandchild = int(run.wait_output("grandchild").split()[1])
    leader = run.handle.workers[0].pid  # type: ignore[attr-defined]
    restarted = LocalExecutor(tmp_path / "jobs")
    assert restarted.reap_orphans(lambda attempt_id: False) == []
    assert restarted.reap_orphans(lambda attempt_id: True) == [run.launch.attempt_id]
    assert wait_gone(grandchild)
    assert run.wait() == ExitStatus(None, signal.SIGKILL) and wait_gone(leader)


def test_factory(tmp_path: Path) -> None:
    assert isinstance(make_executor("local", tmp_path), LocalExecutor)
    with pytest.raises(InvalidInput, match="unknown executor"):
        make_executor("kubernetes", tmp_path)
