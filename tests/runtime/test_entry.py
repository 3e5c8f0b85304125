"""The job entry point training built-in models against a fake control plane.

In-process runs call :func:`nimbus.runtime.entry.main` directly; the crash, fence and
multi-worker tests run ``python -m nimbus.runtime.entry`` as real processes.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load as st_load

from nimbus.jobs.domain import USER_ERROR_EXIT_CODE, Resources
from nimbus.jobs.executors.base import AttemptLaunch, Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.runtime import entry
from nimbus.runtime.job_api import FENCED_EXIT_CODE
from tests.runtime import synthetic
from tests.runtime.helpers import PYTHON, FakeJobApi, Harness, run_main, running

SMALL = {"epochs": 3, "batch_size": 32, "seed": 7}


def weights(job_api: FakeJobApi) -> dict[str, torch.Tensor]:
    return st_load(job_api.artifacts["weights.safetensors"])


def steps(job_api: FakeJobApi, attempt: str | None = None) -> list[int]:
    return [step for step, _ in job_api.series("train_loss", attempt)]


@pytest.fixture(scope="module")
def small_digits() -> Any:
    return synthetic.digits(limit=400)


@pytest.fixture(scope="module")
def uninterrupted(small_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> FakeJobApi:
    """SMALL on 400 digits, trained by one attempt from start to end."""
    with running(tmp_path_factory.mktemp("whole")) as whole:
        whole.job_api.job(small_digits, "cnn", SMALL)
        assert run_main(whole) == 0
    return whole.job_api


def test_builtin_cnn_on_digits_end_to_end(harness: Harness, capsys: Any) -> None:
    job_api = harness.job_api
    job_api.job(synthetic.digits(), "cnn", {"epochs": 5})
    assert run_main(harness) == 0

    assert set(job_api.artifacts) == {"spec.json", "weights.safetensors", "model.onnx"}
    spec = json.loads(job_api.artifacts["spec.json"])
    assert spec["architecture"] == "cnn" and spec["classes"] == [str(i) for i in range(10)]
    (evaluation,) = job_api.results
    assert evaluation["accuracy"] >= 0.9
    assert np.array(evaluation["confusion_matrix"]).sum() == evaluation["support"]
    assert steps(job_api) == [1, 2, 3, 4, 5]
    assert job_api.series("test_accuracy") == [(5, evaluation["accuracy"])]
    assert job_api.progress[-1] == {
        "attempt": "att_1",
        "epoch": 5,
        "epochs": 5,
        "batch": 22,
        "batches": 22,
    }
    assert [step for step, _, _ in job_api.checkpoints] == [1, 2, 3, 4, 5]
    assert job_api.checkpoint_epochs == ["1", "2", "3", "4", "5"]

    test_key = job_api.spec["dataset"]["files"]["test_x.npy"]["key"]
    test_x = np.load(io.BytesIO(job_api.blobs[test_key]))
    session = ort.InferenceSession(job_api.artifacts["model.onnx"])
    (probabilities,) = session.run(None, {"input": test_x})
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

    out = capsys.readouterr().out
    assert "epoch 5/5" in out and "test accuracy" in out
    # Each epoch's line says how long the epoch took (bench/train.py reads it).
    epoch_lines = [line for line in out.splitlines() if "train_loss" in line]
    assert len(epoch_lines) == 5
    timed = re.compile(r"  \(\d+\.\d{3} s, \d+\.\d{3} s CPU\)$")
    assert all(timed.search(line) for line in epoch_lines), epoch_lines


def test_a_run_resumed_after_epoch_k_ends_identical(
    harness: Harness, small_digits: Any, uninterrupted: FakeJobApi
) -> None:
    job_api = harness.job_api
    job_api.job(small_digits, "cnn", SMALL)
    job_api.fence_after_checkpoints = 1  # attempt 1 is replaced right after epoch 1
    assert run_main(harness) == FENCED_EXIT_CODE
    assert [step for step, _, _ in job_api.checkpoints] == [1]

    job_api.fence_after_checkpoints = None
    second = job_api.new_attempt()
    assert run_main(harness, second) == 0
    assert steps(job_api, second) == [2, 3]
    assert job_api.progress[-1]["epoch"] == 3
    assert next(p["epoch"] for p in job_api.progress if p["attempt"] == second) == 2

    got, want = weights(job_api), weights(uninterrupted)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert job_api.results == uninterrupted.results


def test_sigkill_mid_training_resumes_from_the_last_complete_checkpoint(
    harness: Harness, small_digits: Any, uninterrupted: FakeJobApi
) -> None:
    job_api = harness.job_api
    job_api.job(small_digits, "cnn", {**SMALL, "epochs": 3})
    job_api.checkpoint_delay = 0.5  # keep attempt 1 busy long enough to be killed
    proc = subprocess.Popen(
        [PYTHON, "-m", "nimbus.runtime.entry"],
        env=harness.process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not job_api.checkpoints:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.communicate()
    done = [step for step, _, _ in job_api.checkpoints]
    assert done and done[-1] < 3  # killed mid-training

    job_api.checkpoint_delay = 0.0
    second = job_api.new_attempt()
    assert run_main(harness, second) == 0
    assert steps(job_api, second)[0] == done[-1] + 1
    got, want = weights(job_api), weights(uninterrupted)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_a_fenced_process_exits_promptly(harness: Harness, small_digits: Any) -> None:
    job_api = harness.job_api
    job_api.job(small_digits, "cnn", {**SMALL, "epochs": 50})
    job_api.fence_after_checkpoints = 1
    proc = subprocess.run(
        [PYTHON, "-m", "nimbus.runtime.entry"],
        env=harness.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == FENCED_EXIT_CODE, proc.stderr
    assert "replaced" in proc.stderr
    fenced = next(i for i, (_, r) in enumerate(job_api.requests) if r.startswith("checkpoints/"))
    later = [route for _, route in job_api.requests[fenced + 1 :]]
    assert len(later) < 10, later  # no more epochs: it stopped at its next call
    assert max(step for step, _ in job_api.series("train_loss")) == 1


@pytest.mark.parametrize("kind", ["local", "forkserver"])
def test_two_gloo_workers_under_a_real_executor(harness: Harness, kind: str) -> None:
    """The executors' own environment (scrubbed, RANK/WORLD_SIZE/MASTER_*), two workers."""
    job_api = harness.job_api
    job_api.job(synthetic.digits(limit=300), "cnn", {"epochs": 2, "batch_size": 32}, workers=2)
    root = harness.root / kind
    executor = (
        LocalExecutor(root, grace_seconds=1)
        if kind == "local"
        else ForkServerExecutor(root, preload=["torch"], grace_seconds=1)
    )
    chunks: list[str] = []
    env = harness.env()
    launch = AttemptLaunch(
        job_id="job_1",
        attempt_id=env["NIMBUS_ATTEMPT_ID"],
        attempt_number=1,
        token=env["NIMBUS_JOB_TOKEN"],
        program=Program(module="nimbus.runtime.entry"),
        workdir=root / "job_1" / env["NIMBUS_ATTEMPT_ID"],
        nimbus_url=env["NIMBUS_URL"],
        resources=Resources(cpus=1, memory_bytes=0, workers=2),
        extra_env={k: env[k] for k in ("NIMBUS_CACHE_DIR", "NIMBUS_HEARTBEAT_SECONDS")},
        output=chunks.append,
    )
    try:
        handle = executor.start(launch)
        deadline = time.monotonic() + 180
        while (status := executor.poll(handle)) is None:
            assert time.monotonic() < deadline, "".join(chunks)
            time.sleep(0.05)
    finally:
        executor.close()
    output = "".join(chunks)
    assert status.ok, output
    assert steps(job_api) == [1, 2]  # rank 0 alone reports
    assert [step for step, _, _ in job_api.checkpoints] == [1, 2]
    assert job_api.artifact_puts == 3 and len(job_api.results) == 1
    assert "[0] nimbus: job job_1 attempt 1: cnn on digits:1 with 2 workers" in output
    # Each worker says what it trains on: no GPU asked for, so the CPU, over gloo.
    for rank in (0, 1):
        assert f"[{rank}] nimbus: worker {rank}: cpu, torch.distributed gloo" in output
    assert "[1] epoch" not in output


def test_invalid_params_fail_without_retry(harness: Harness, capsys: Any) -> None:
    harness.job_api.job(synthetic.digits(limit=100), "cnn", {"epochs": 0})
    assert run_main(harness) == USER_ERROR_EXIT_CODE
    assert "epochs" in capsys.readouterr().err


def test_not_a_job_environment(tmp_path: Path) -> None:
    assert entry.main({"NIMBUS_URL": "http://127.0.0.1:1"}) == entry.ENV_ERROR_EXIT_CODE


def test_a_job_without_a_dataset_says_so_when_its_code_asks_for_one() -> None:
    """A notebook may run without a dataset; ``nr.dataset()`` in it names what is missing."""
    from nimbus.errors import InvalidInput
    from nimbus.runtime.entry import dataset_of
    from nimbus.wire.job_api import AttemptSpec

    spec = AttemptSpec.model_validate(
        {
            "job_id": "job_1",
            "attempt_id": "att_1",
            "attempt": 1,
            "model": "code:sha256/00/" + "0" * 64,
            "params": {},
            "seed": 0,
            "workers": 1,
            "resources": {"cpus": 1, "gpus": 0, "memory": 0, "workers": 1},
            "dataset": None,
            "code": None,
        }
    )
    with pytest.raises(InvalidInput, match=r"job job_1 has no dataset: nr.dataset\(\) needs one"):
        dataset_of(spec)
