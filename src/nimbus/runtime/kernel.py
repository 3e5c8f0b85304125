"""The kernel's side of a notebook job: an IPython extension that makes ``nr`` live.

:func:`nimbus.runtime.notebook.run_notebook` starts the notebook's ipykernel with this
module as an extension; IPython calls :func:`load_ipython_extension` before the first cell.
The kernel is a child of the job process with its environment (job API URL, attempt,
job token, directory), so it opens a job API client of its own: ``nr.log`` posts the job's
metrics from here, ``nr.dataset()`` reads the same blob cache, ``nr.save_model`` writes the
job's model directory. After every cell the reports are flushed (a cell's metrics are stored
before the next cell starts) and what the job process needs at the end (the saved model's
spec, an ``nr.evaluate`` result, the last step) is written to the state file it named.
Heartbeats, the model upload and the result stay with the job process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nimbus.runtime import api, layer
from nimbus.runtime.entry import JobEnv, user_session
from nimbus.runtime.job_api import HttpReporter, JobApiClient, JobStop
from nimbus.runtime.notebook import STATE_VARIABLE, KernelState


def load_ipython_extension(ipython: Any) -> None:
    """Activate the job's ``nr`` session in this kernel (IPython's extension hook)."""
    session, reporter = start_session(os.environ)
    state_file = Path(os.environ[STATE_VARIABLE])

    def after_cell(result: Any) -> None:
        try:
            reporter.flush()
        except (Exception, JobStop) as exc:  # the cell's output says so; the job ends anyway
            print(f"nimbus: storing the cell's reports failed: {exc}", file=sys.stderr)
        write_state(session, state_file)

    ipython.events.register("post_run_cell", after_cell)


def start_session(environ: Mapping[str, str]) -> tuple[api.Session, HttpReporter]:
    """The attempt's ``nr`` session over a job API client of this process, activated."""
    env = JobEnv.from_environ(environ)
    layer.activate(environ)  # the job's --requirements, as in the job process
    client = JobApiClient(
        env.url, env.attempt_id, env.token, cache_dir=env.cache_dir, retry_seconds=env.retry_seconds
    )
    spec = client.spec()
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    return user_session(env, client, spec)


def write_state(session: api.Session, path: Path) -> None:
    """What the job process reads once the notebook ran (atomically replaced)."""
    state = KernelState(session.saved_model, session.evaluation, session.logged_step)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    os.replace(tmp, path)
