"""Helpers for executor and scheduler tests: real processes, short grace periods."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.jobs.domain import Resources
from nimbus.jobs.executors.base import AttemptLaunch, Executor, ExitStatus, Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor

GRACE = 0.5


def make(kind: str, root: Path, grace: float = GRACE) -> Executor:
    if kind == "local":
        return LocalExecutor(root, grace_seconds=grace)
    return ForkServerExecutor(root, preload=["json", "json.tool"], grace_seconds=grace)


@pytest.fixture(scope="module", params=["local", "forkserver"])
def executor(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Executor]:
    """Each executor once per module (the fork server's zygote is reused across tests)."""
    ex = make(request.param, tmp_path_factory.mktemp(request.param) / "jobs")
    yield ex
    ex.close()


class Run:
    """One attempt started on an executor, its output collected."""

    counter = 0

    def __init__(
        self,
        executor: Executor,
        code: str = "",
        *,
        workers: int = 1,
        root: Path | None = None,
        program: Program | None = None,
        files: dict[str, str] | None = None,
        resources: Resources | None = None,
        tenant_id: int | None = None,
        extra_env: dict[str, str] | None = None,
        affinity: str | None = None,
    ) -> None:
        Run.counter += 1
        self.executor = executor
        self.chunks: list[str] = []
        base = root or getattr(executor, "jobs_root")  # noqa: B009 - executors share it
        self.workdir = base / "job_t" / f"att_{os.getpid()}_{Run.counter}"
        self.launch = AttemptLaunch(
            job_id="job_t",
            attempt_id=self.workdir.name,
            attempt_number=1,
            token="njt_secret",
            program=program or Program(code=code),
            workdir=self.workdir,
            nimbus_url="http://127.0.0.1:1",
            resources=resources or Resources(cpus=1, memory_bytes=0, workers=workers),
            output=self.chunks.append,
            tenant_id=tenant_id,
            extra_env=extra_env or {},
            affinity=affinity,
        )
        for name, text in (files or {}).items():
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / name).write_text(text)
        self.handle = executor.start(self.launch)

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    def wait(self, timeout: float = 15.0) -> ExitStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.executor.poll(self.handle)
            if status is not None:
                return status
            time.sleep(0.01)
        raise TimeoutError(f"attempt still running; output so far:\n{self.output}")

    def wait_output(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} never printed; output:\n{self.output}")
            self.executor.poll(self.handle)
            time.sleep(0.01)
        return self.output


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
