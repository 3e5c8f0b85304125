"""Running a user's notebook inside a job: papermill executes it in a kernel of its own.

The job process stays the attempt's worker (heartbeats, the model upload, the result); the
notebook's cells run in an ipykernel child process, inside the same sandbox, which talks
ZMQ to this process over unix sockets in the job's directory (the ``ipc`` transport: no TCP
port, on the sandbox's loopback or, unsandboxed, the host's, and no "running over TCP
without encryption" warning in the job log). papermill injects the job's params
after the cell tagged ``parameters`` (JSON values, as ``nr.params`` has them) and saves the
notebook after each cell; the kernel loads :mod:`nimbus.runtime.kernel` first, which makes
``nr`` live in it (its metrics are the job's metrics) and leaves what the cells did
(a saved model, an evaluation) in a small state file that this process reads at the end.

The executed notebook, outputs included, becomes the job artifact
:data:`EXECUTED_ARTIFACT` whether the notebook ran through or failed; a failing cell fails
the job with the cell's error in the job log (:class:`~nimbus.runtime.usercode.UserCodeError`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbus.errors import NimbusError
from nimbus.runtime.usercode import UserCodeError

EXECUTED_ARTIFACT = "notebook.ipynb"
KERNEL_EXTENSION = "nimbus.runtime.kernel"
STATE_VARIABLE = "NIMBUS_NOTEBOOK_STATE"  # where the kernel leaves its state (kernel.py)
KERNEL_NAME = "python3"  # ipykernel's own: this interpreter (jupyter_client resolves it)
IPC_PREFIX = "kernel"  # the sockets: kernel-1..5 in the working directory, which both share
START_TIMEOUT = 120  # seconds for the kernel to start: it imports torch for nr on 2 cores
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class KernelState:
    """What the notebook's cells did through ``nr``, as the kernel last wrote it."""

    saved_model: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    logged_step: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "saved_model": self.saved_model,
                "evaluation": self.evaluation,
                "logged_step": self.logged_step,
            }
        )

    @classmethod
    def read(cls, path: Path) -> KernelState:
        """The state at ``path``; an empty one when the kernel wrote none (no cell ran)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        return cls(raw.get("saved_model"), raw.get("evaluation"), int(raw.get("logged_step", 0)))


def run_notebook(
    notebook: Path,
    params: Mapping[str, Any],
    work_dir: Path,
    store: Callable[[str, bytes], None],
    job_variables: Mapping[str, str],
) -> KernelState:
    """Execute ``notebook`` with ``params`` in a kernel whose working directory is
    ``work_dir`` and whose environment adds ``job_variables`` (the attempt's: see
    :meth:`nimbus.runtime.entry.JobEnv.variables`) to this process's; the executed notebook
    goes to ``store(name, bytes)`` (the job's artifacts) even when a cell fails. Returns
    what the cells did through ``nr``; raises :class:`UserCodeError` (the error printed to
    stderr) when a cell raised."""
    # papermill (and nbclient, jupyter_client, zmq, tornado under it) takes ~1 s to import:
    # only a notebook job pays it.
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    executed = notebook.with_name(f"executed-{notebook.name}")
    state_file = work_dir / ".notebook-state.json"
    state_file.unlink(missing_ok=True)
    failure: str | None = None
    with _kernel_environment(work_dir, state_file, job_variables):
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=dict(params),
                kernel_name=KERNEL_NAME,
                language="python",
                progress_bar=False,
                stdout_file=sys.stdout,  # the cells' output, live, into the job log
                stderr_file=sys.stderr,
                start_timeout=START_TIMEOUT,
                cwd=str(work_dir),
                extra_arguments=[f"--IPKernelApp.extra_extensions={KERNEL_EXTENSION}"],
                # the kernel manager nbclient makes (and shuts down) reads this
                config=Config(KernelManager={"transport": "ipc", "ip": IPC_PREFIX}),
            )
        except PapermillExecutionError as exc:
            failure = cell_failure(exc.exec_count, exc.ename, exc.evalue, exc.traceback)
        except RuntimeError as exc:  # the kernel died or did not start (nbclient's errors)
            failure = f"the notebook's kernel failed: {type(exc).__name__}: {exc}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    if executed.is_file():
        _store_executed(executed.read_bytes(), store)
    if failure is not None:
        print(failure, file=sys.stderr, flush=True)
        raise UserCodeError(failure.splitlines()[0])
    return KernelState.read(state_file)


def _store_executed(data: bytes, store: Callable[[str, bytes], None]) -> None:
    """The executed notebook as the job's artifact; one the control plane refuses (over the
    artifact size limit, the tenant's storage quota) is reported, not a failure of the job:
    the notebook ran, its metrics and model count."""
    try:
        store(EXECUTED_ARTIFACT, data)
    except NimbusError as exc:
        print(
            f"nimbus: the executed notebook ({len(data)} bytes) was not stored: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return
    print(f"stored the executed notebook as the artifact {EXECUTED_ARTIFACT}", flush=True)


def cell_failure(exec_count: int | None, ename: str, evalue: str, traceback: list[str]) -> str:
    """The job log's account of a failed cell: which one, the error, its traceback
    (IPython colours it; the log is plain text)."""
    where = f"cell [{exec_count}]" if exec_count is not None else "a cell"
    lines = [f"the notebook failed in {where}: {ename}: {evalue}"]
    lines += [_ANSI.sub("", line) for line in traceback]
    return "\n".join(lines)


@contextmanager
def _kernel_environment(
    work_dir: Path, state_file: Path, job_variables: Mapping[str, str]
) -> Iterator[None]:
    """The kernel inherits this process's environment: tell it where its state goes, and
    keep Jupyter's and IPython's files in the job's directory (the job's home may not be
    writable in the sandbox)."""
    dot = work_dir / ".jupyter"
    wanted = {
        **job_variables,
        STATE_VARIABLE: str(state_file),
        "JUPYTER_RUNTIME_DIR": str(dot / "runtime"),  # the kernel's connection file
        "JUPYTER_DATA_DIR": str(dot / "data"),
        "JUPYTER_CONFIG_DIR": str(dot / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",  # jupyter_core's future default, without its warning
        "IPYTHONDIR": str(dot / "ipython"),
        "MPLCONFIGDIR": str(dot / "matplotlib"),
    }
    for folder in ("runtime", "data", "config", "ipython", "matplotlib"):
        (dot / folder).mkdir(parents=True, exist_ok=True)
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
