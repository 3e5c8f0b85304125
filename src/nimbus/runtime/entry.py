"""The process a job attempt runs: ``python -m nimbus.runtime.entry``.

It reads its environment (set by the executor), fetches the attempt's spec over the job API
routes, downloads the dataset version's prepared files into the shared blob cache, and then
either trains a built-in model (resuming from the job's latest checkpoint, then exporting,
uploading and scoring it) or runs the user's script with the ``nr`` API ready. It talks to
the control plane only over HTTP with the job token, so it runs unchanged on a remote node.

Environment: ``NIMBUS_URL``, ``NIMBUS_ATTEMPT_ID``, ``NIMBUS_JOB_TOKEN``, ``NIMBUS_JOB_DIR``
(required), ``NIMBUS_JOB_ID``, ``NIMBUS_CACHE_DIR`` (blob cache shared by the workers of a
node; default ``NIMBUS_JOB_DIR/cache``), ``NIMBUS_HEARTBEAT_SECONDS`` (10),
``NIMBUS_RETRY_SECONDS`` (60: how long an unreachable control plane is waited for),
``NIMBUS_JOB_ENV`` (the job's environment: :mod:`nimbus.runtime.layer`), and with
several workers ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
Only rank 0 reports metrics and progress and uploads checkpoints, artifacts and the result;
every rank resumes from the same checkpoint.

Exit codes: 0 success; 3 (``USER_ERROR_EXIT_CODE``) the user's code or input failed, so the
job fails without a retry; 75 this attempt was fenced (replaced by another); 76 the job was
cancelled; 69 the control plane stayed unreachable; 2 the environment is not a job's; 1 any
other failure (a bug or an infrastructure fault: retried).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nimbus.datasets.domain import SPLITS, Task
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import USER_ERROR_EXIT_CODE
from nimbus.modelformat.export import export_model
from nimbus.modelformat.files import MODEL_FILES, PROGRAM_FILES
from nimbus.runtime import api, layer
from nimbus.runtime.allocator import keep_freed_memory
from nimbus.runtime.automl_search import Trial
from nimbus.runtime.custom import evaluate_model_dir
from nimbus.runtime.data import DataSplits
from nimbus.runtime.hyperparams import AUTOML_MODEL, validate_automl_params, validate_params
from nimbus.runtime.job_api import (
    CancelRequested,
    Heartbeat,
    HttpReporter,
    JobApiClient,
    JobStop,
)
from nimbus.runtime.notebook import run_notebook
from nimbus.runtime.trainer import train
from nimbus.runtime.usercode import NOTEBOOK_ENTRY, UserCodeError, run_script, unpack
from nimbus.wire.job_api import AttemptSpec, CodeInput

ENV_ERROR_EXIT_CODE = 2
FAILURE_EXIT_CODE = 1
CANCEL_FLUSH_SECONDS = 5.0  # a cancelled job's unsent metrics get this long to arrive
# How much of a worker's memory limit its dataset's splits may take in memory (the rest of
# the limit is the model's, torch's and the mapped files' page cache); without a limit.
IN_MEMORY_SHARE = 0.25
IN_MEMORY_UNLIMITED = 1 << 30


@dataclass(frozen=True)
class JobEnv:
    """What the executor tells a job process, read once from its environment."""

    url: str
    job_id: str
    attempt_id: str
    token: str
    job_dir: Path
    cache_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    heartbeat_seconds: float = 10.0
    retry_seconds: float = 60.0

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> JobEnv:
        missing = [
            k
            for k in ("NIMBUS_URL", "NIMBUS_ATTEMPT_ID", "NIMBUS_JOB_TOKEN", "NIMBUS_JOB_DIR")
            if not env.get(k)
        ]
        if missing:
            raise InvalidInput(f"not started as a job: {', '.join(missing)} not set")
        job_dir = Path(env["NIMBUS_JOB_DIR"])
        try:
            return cls(
                url=env["NIMBUS_URL"],
                job_id=env.get("NIMBUS_JOB_ID", ""),
                attempt_id=env["NIMBUS_ATTEMPT_ID"],
                token=env["NIMBUS_JOB_TOKEN"],
                job_dir=job_dir,
                cache_dir=Path(env.get("NIMBUS_CACHE_DIR") or job_dir / "cache"),
                rank=int(env.get("RANK", "0")),
                world_size=int(env.get("WORLD_SIZE", "1")),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", "0")),
                heartbeat_seconds=float(env.get("NIMBUS_HEARTBEAT_SECONDS", "10")),
                retry_seconds=float(env.get("NIMBUS_RETRY_SECONDS", "60")),
            )
        except ValueError as exc:
            raise InvalidInput(f"malformed job environment: {exc}") from None

    def variables(self) -> dict[str, str]:
        """This environment as variables again, for a process the job starts (a notebook's
        kernel) that must reach the same attempt."""
        variables = {
            "NIMBUS_URL": self.url,
            "NIMBUS_JOB_ID": self.job_id,
            "NIMBUS_ATTEMPT_ID": self.attempt_id,
            "NIMBUS_JOB_TOKEN": self.token,
            "NIMBUS_JOB_DIR": str(self.job_dir),
            "NIMBUS_CACHE_DIR": str(self.cache_dir),
            "NIMBUS_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "NIMBUS_RETRY_SECONDS": str(self.retry_seconds),
        }
        if self.world_size > 1:
            variables |= {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size)}
        return variables


def main(
    environ: Mapping[str, str] | None = None,
    *,
    on_stop: Callable[[JobStop], None] | None = None,
) -> int:
    """Run one attempt; returns the process exit code (see the module docstring).

    ``on_stop`` is called from the heartbeat thread when the job is cancelled or the attempt
    fenced; by default it ends the process at once.
    """
    try:
        env = JobEnv.from_environ(os.environ if environ is None else environ)
    except InvalidInput as exc:
        print(f"nimbus.runtime.entry: {exc}", file=sys.stderr)
        return ENV_ERROR_EXIT_CODE
    env.job_dir.mkdir(parents=True, exist_ok=True)
    layer.activate(os.environ if environ is None else environ)
    keep_freed_memory()  # training steps reuse their tensors' memory: see allocator.py
    client = JobApiClient(
        env.url, env.attempt_id, env.token, cache_dir=env.cache_dir, retry_seconds=env.retry_seconds
    )
    stop_now = on_stop or _exit_now

    def stopping(stop: JobStop) -> None:
        if isinstance(stop, CancelRequested):  # the job ends cancelled: keep what it logged
            with contextlib.suppress(Exception, JobStop):
                client.reports.flush(timeout=CANCEL_FLUSH_SECONDS)
        stop_now(stop)

    try:
        with client, Heartbeat(client, env.heartbeat_seconds, stopping):
            run_attempt(env, client)
        return 0
    except JobStop as stop:
        print(f"nimbus: stopping: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    except UserCodeError:
        return USER_ERROR_EXIT_CODE  # the script's traceback is already printed
    except InvalidInput as exc:  # the same input fails the same way: do not retry
        print(f"nimbus: {exc}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT_CODE
    except Exception:
        traceback.print_exc()
        return FAILURE_EXIT_CODE
    finally:
        sys.stdout.flush()


def _exit_now(stop: JobStop) -> None:
    print(f"nimbus: stopping: {stop}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(stop.exit_code)


def run_attempt(env: JobEnv, client: JobApiClient) -> None:
    """Everything one worker of an attempt does, given its environment and job API client."""
    spec = client.spec()
    # A fork-server child inherits the zygote's intra-op thread pool size: give the job the
    # CPU slots it asked for (at least one), never the whole node.
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    version = spec.dataset
    what = spec.code.entry if spec.code else spec.model
    if env.rank == 0:
        print(
            f"nimbus: job {spec.job_id} attempt {spec.attempt}: {what} "
            + (
                f"on {version.get('dataset')}:{version.get('version')}"
                if version is not None
                else "without a dataset"
            )
            + (f" with {env.world_size} workers" if env.world_size > 1 else ""),
            flush=True,
        )
    with _process_group(env) as (group, device), _in_dir(env.job_dir):
        if spec.code:
            _run_user_code(env, client, spec, spec.code)  # torch.distributed is ready for it
        elif spec.model == AUTOML_MODEL:
            _run_automl(env, client, spec)
        else:
            _run_builtin(env, client, spec, group, device)


def dataset_of(spec: AttemptSpec) -> dict[str, Any]:
    """The dataset version object of the job (every job but a notebook has one)."""
    if spec.dataset is None:
        raise InvalidInput(
            f"job {spec.job_id} has no dataset: nr.dataset() needs one; submit the "
            "notebook with --dataset NAME[:V] (the SDK: dataset=...)"
        )
    return spec.dataset


def load_data(
    client: JobApiClient, version: dict[str, Any], directory: Path, memory_bytes: int = 0
) -> DataSplits:
    """The dataset version's prepared splits from the blob cache: read into memory as far as
    they fit in :data:`IN_MEMORY_SHARE` of the worker's memory limit ``memory_bytes``
    (:data:`IN_MEMORY_UNLIMITED` without a limit), memory-mapped beyond."""
    directory.mkdir(parents=True, exist_ok=True)
    files = version.get("files") or {}
    for split in SPLITS:
        for part in ("x", "y"):
            name = f"{split}_{part}.npy"
            if name not in files:
                raise InvalidInput(f"the dataset version has no prepared file {name}")
            # The workers of an attempt share its directory: replace links atomically,
            # each through a name of its own (pids repeat across PID namespaces).
            tmp = directory / f".{name}.{secrets.token_hex(8)}"
            tmp.symlink_to(client.blob(files[name]["key"]))
            os.replace(tmp, directory / name)
    schema = version.get("schema") or {}
    if schema.get("groups") and "test_g.npy" in files:
        tmp = directory / f".test_g.npy.{secrets.token_hex(8)}"
        tmp.symlink_to(client.blob(files["test_g.npy"]["key"]))
        os.replace(tmp, directory / "test_g.npy")
    return DataSplits.load(
        directory,
        Task(version["task"]),
        list(version["classes"]),
        schema.get("features"),
        schema.get("transform"),
        in_memory_bytes=int(memory_bytes * IN_MEMORY_SHARE)
        if memory_bytes
        else IN_MEMORY_UNLIMITED,
        groups=schema.get("groups"),
    )


def _run_builtin(
    env: JobEnv, client: JobApiClient, spec: AttemptSpec, group: Any, device: torch.device
) -> None:
    memory = spec.resources.memory
    data = load_data(client, dataset_of(spec), env.job_dir / "data", memory)
    params = dict(spec.params)
    if spec.seed is not None and "seed" not in params:
        params["seed"] = spec.seed
    epochs = validate_params(spec.model, data.task, params)["epochs"]
    reporter = EpochTimedReporter(client, rank=env.rank, label="epoch", total_steps=epochs)
    with _flushed(reporter):  # metrics and the last checkpoint stored before the result
        result = train(spec.model, data, params, reporter, process_group=group, device=device)
    if env.rank:
        return
    model_dir = env.job_dir / "model"
    export_model(result.model, result.spec, result.example_input, model_dir)
    _upload_model(client, model_dir)
    if result.evaluation is not None:
        client.result(result.evaluation)
        print(
            f"test accuracy {result.evaluation['accuracy']:.4f} on "
            f"{result.evaluation['support']} examples",
            flush=True,
        )


def _run_automl(env: JobEnv, client: JobApiClient, spec: AttemptSpec) -> None:
    """The AutoML search (one process), its winner exported, uploaded and scored; the
    leaderboard is a job artifact (every trial) and part of the job's result (the best
    :data:`automl.RESULT_ROWS`). The search's state is the job's checkpoint after every
    trial: a retried attempt carries on from it.

    Imported here: the search's families (scikit-learn's learners and their ONNX converters,
    ~1.4 s of imports) are for AutoML jobs only, and the fork server's zygote, which imports
    this module, would otherwise hold them for every job."""
    from nimbus.runtime import automl

    data = load_data(client, dataset_of(spec), env.job_dir / "data", spec.resources.memory)
    params = validate_automl_params(dict(spec.params))
    reporter = HttpReporter(client, rank=env.rank, label="trial", echo=lambda line: None)

    def on_trial(number: int, trial: Trial, best: Trial) -> None:
        shown = "failed" if trial.score is None else f"{params['metric']} {trial.score:.4f}"
        print(
            f"automl: trial {number} {trial.family} {json.dumps(dict(trial.config))}: {shown} "
            f"in {trial.seconds:.2f} s (best {best.family} {best.score:.4f})",
            flush=True,
        )
        metrics = {"fit_seconds": trial.seconds, "best_val_score": best.score or 0.0}
        if trial.score is not None:
            metrics["val_score"] = trial.score
        reporter.log(number, **metrics)  # the job's metric series, one step per trial

    model_dir = env.job_dir / "model"
    with _flushed(reporter):
        earlier = reporter.load_checkpoint()  # an earlier attempt's trials and spent budget
        if earlier is not None:
            print(
                f"automl: resuming the search after trial {reporter.last_step} of an earlier "
                f"attempt ({len(earlier.get('trials') or [])} trials, "
                f"{float(earlier.get('elapsed') or 0):.1f} s spent by then)",
                flush=True,
            )
        found = automl.search(
            data,
            params,
            model_dir,
            threads=max(1, int(spec.resources.cpus)),
            on_trial=on_trial,
            resume=earlier,
            on_checkpoint=reporter.save_at,  # after every trial: its number, the state
        )
    summary = found.summary()
    print(automl.leaderboard_text(summary), flush=True)
    client.put_artifact(automl.LEADERBOARD_FILE, json.dumps(summary, indent=2).encode())
    _upload_model(client, model_dir)
    evaluation = evaluate_model_dir(model_dir, data) if len(data.test) else {}
    if evaluation:
        reporter.log(len(found.trials), test_accuracy=evaluation["accuracy"])
        reporter.flush()
        print(
            f"test accuracy {evaluation['accuracy']:.4f} on {evaluation['support']} examples",
            flush=True,
        )
    client.result({**evaluation, "automl": found.summary(automl.RESULT_ROWS)})


class EpochTimedReporter(HttpReporter):
    """The built-in's reporter: each epoch's log line ends with the wall-clock and CPU
    seconds (this process, all threads) since the previous epoch ended: its training pass
    and validation scoring, and the previous epoch's checkpoint. Throughput shows in the job
    log. Not metrics: those stay identical across runs with the same seed."""

    def __init__(self, client: JobApiClient, **kwargs: Any) -> None:
        super().__init__(client, echo=self._echo, **kwargs)
        self._last = (time.perf_counter(), time.process_time())
        self._took: tuple[float, float] | None = None

    def load_checkpoint(self) -> dict[str, Any] | None:
        state = super().load_checkpoint()
        self._last = (time.perf_counter(), time.process_time())  # the first epoch starts
        return state

    def log(self, step: int, **metrics: float) -> None:
        if "train_loss" in metrics:
            now = (time.perf_counter(), time.process_time())
            self._took = (now[0] - self._last[0], now[1] - self._last[1])
            self._last = now
        super().log(step, **metrics)

    def _echo(self, line: str) -> None:
        if self._took is not None:
            wall, cpu = self._took
            line, self._took = f"{line}  ({wall:.3f} s, {cpu:.3f} s CPU)", None
        print(line, flush=True)


def user_session(
    env: JobEnv, client: JobApiClient, spec: AttemptSpec
) -> tuple[api.Session, HttpReporter]:
    """The ``nr`` session of a user's code (a script, or a notebook's kernel), activated:
    the job's params, its reports over the job API, its dataset loaded on first use."""
    if spec.seed is not None:
        seed_all(spec.seed)
    reporter = HttpReporter(client, rank=env.rank)
    session = api.Session(
        params=api.coerce_params(spec.params),
        reporter=reporter,
        load_data=lambda: load_data(
            client, dataset_of(spec), env.job_dir / "data", spec.resources.memory
        ),
        model_dir=env.job_dir / "model",
        rank=env.rank,
    )
    api.activate(session)
    return session, reporter


def _run_user_code(env: JobEnv, client: JobApiClient, spec: AttemptSpec, code: CodeInput) -> None:
    code_dir = env.job_dir / ("code" if env.world_size == 1 else f"code-rank{env.rank}")
    script = unpack(client.blob(code.key), code.entry, code_dir, code.format)
    session, reporter = user_session(env, client, spec)
    try:
        with _flushed(reporter):  # its metrics and last checkpoint stored before its result
            if script.suffix == Path(NOTEBOOK_ENTRY).suffix:
                _run_notebook(env, client, session, script)
            else:
                run_script(script)
    finally:
        api.activate(None)
    if env.rank:
        return
    evaluation = session.evaluation
    if session.saved_model is not None:
        _upload_model(client, session.model_dir)
        if evaluation is None and spec.dataset is not None and len(session.data.test):
            evaluation = evaluate_model_dir(session.model_dir, session.data)
            session.reporter.log(max(session.logged_step, 1), test_accuracy=evaluation["accuracy"])
            reporter.flush()  # stored before the result, which ends the job
    if evaluation is not None:
        client.result(evaluation)


def _run_notebook(env: JobEnv, client: JobApiClient, session: api.Session, notebook: Path) -> None:
    """The notebook runs in a kernel of its own (:mod:`nimbus.runtime.notebook`); what its
    cells did through ``nr`` becomes this session's, so the job ends as a script's would."""
    if env.world_size > 1:
        raise InvalidInput("a notebook runs as one worker: submit it with workers=1")
    state = run_notebook(
        notebook, session.params, env.job_dir, client.put_artifact, env.variables()
    )
    session.saved_model, session.evaluation = state.saved_model, state.evaluation
    session.logged_step = state.logged_step


@contextmanager
def _flushed(reporter: HttpReporter) -> Iterator[None]:
    """Waits, as the block ends, for what it reported to be stored: metrics, progress and
    checkpoint. When the block failed, the failure is what the job ends with: an error
    storing the reports is then printed, not raised."""
    try:
        yield
    except BaseException:
        try:
            reporter.flush()
        except (Exception, JobStop) as exc:
            print(f"nimbus: storing the last reports failed: {exc}", file=sys.stderr, flush=True)
        raise
    reporter.flush()


def _upload_model(client: JobApiClient, model_dir: Path) -> None:
    names = list(MODEL_FILES)
    if all((model_dir / name).is_file() for name in PROGRAM_FILES):
        names += PROGRAM_FILES  # the gradient program, when the model could be exported so
    for name in names:
        client.put_artifact(name, (model_dir / name).read_bytes())
    print(f"uploaded the model: {', '.join(names)}", flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _process_group(env: JobEnv) -> Iterator[tuple[Any, torch.device]]:
    """torch.distributed from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT with several workers
    (nccl on GPUs, gloo on CPUs); yields the group (None with one worker) and the device."""
    cuda = torch.cuda.is_available()
    device = (
        torch.device("cuda", env.local_rank % torch.cuda.device_count())
        if cuda
        else (torch.device("cpu"))
    )
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    group = f", torch.distributed {backend}" if env.world_size > 1 else ""
    print(f"nimbus: worker {env.rank}: {_device_name(device)}{group}", flush=True)
    if env.world_size <= 1:
        yield None, device
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
    )
    try:
        yield dist.group.WORLD, device
    finally:
        dist.destroy_process_group()


def _device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu``: what the worker's log says it trains on."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


if __name__ == "__main__":
    sys.exit(main())
