"""The seed's TensorFlow program (examples/tf_cnn.py) as a real job (issue 15): its
environment adds tensorflow-cpu and tf2onnx from PyPI (examples/tf_requirements.txt) over
the platform's packages, ``tf.keras`` runs on TensorFlow (not on the torch backend Keras
gets otherwise), metrics and checkpoints go through ``nr.KerasCallback``, and an attempt
SIGKILLed after its first epoch is resumed from that checkpoint by the next attempt.
``nr.save_model`` exports ONNX with tf2onnx (checked against TensorFlow within 1e-4); the
version registers, deploys and answers OIP v2 ``/infer`` and ``/predict`` with the classes
TensorFlow predicted in the job.

A root server that sandboxes jobs: an environment is built as a job uid, never as root
(docs/environments.md). The build downloads ~250 MB from PyPI: slow, one job."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nimbus.demo_data import png_bytes
from nimbus.jobs.domain import AttemptState, ExitReason
from tests.e2e.conftest import (
    FAST,
    Store,
    client_for,
    kill_job_processes,
    logs_text,
    steps_by_attempt,
    upload_digits,
    wait_for,
)
from tests.helpers import ServerProcess, passable_dir

# The environment's build, two imports of TensorFlow and the removal of its 1.3 GB take
# 2.5-4 minutes on a loaded 2-core machine, over the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The example, its first attempt paused after epoch 1 (until the test kills it), and the
# classes TensorFlow gives a few test images once it is trained.
MAIN = """\
import json, time

import numpy as np
import tensorflow as tf

from nimbus import runtime as nr

import tf_cnn

FRESH = nr.keras_initial_epoch() == 0


class PausedAfterEpochOne(nr.KerasCallback):
    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if FRESH and epoch == 0:
            print("paused after epoch 1", flush=True)
            time.sleep(600)


nr.KerasCallback = PausedAfterEpochOne
model = tf_cnn.main()
x = np.array(nr.dataset().test.x[:6])
classes = model.predict(x, verbose=0).argmax(axis=1)
print("tensorflow predicts " + json.dumps({"x": x.tolist(), "classes": classes.tolist()}))
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with passable_dir() as base:
        # The default executor: an attempt starts cold, or forked from its tenant's warm
        # sandbox (torch imported) when one is ready.
        env = {**FAST, "NIMBUS_JOB_ISOLATION": "sandbox"}
        with ServerProcess(base / "home", env=env) as running:
            yield running


@pytest.fixture
def store(server: ServerProcess) -> Iterator[Store]:
    opened = Store(server.home)
    yield opened
    opened.close()


def test_the_seeds_tensorflow_program_trains_resumes_registers_and_serves(
    server: ServerProcess, store: Store, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(EXAMPLES / "tf_cnn.py", code / "tf_cnn.py")
    (code / "main.py").write_text(MAIN)
    requirements = (EXAMPLES / "tf_requirements.txt").read_text().splitlines()
    with client_for(server) as api:
        digits = upload_digits(api, tmp_path)
        job_id = api.submit_job(
            digits,
            code,
            params={"epochs": "2", "batch_size": "32"},
            memory="3G",
            requirements=requirements,
        ).id
        wait_for("the first epoch's checkpoint", lambda: store.checkpoint_step(job_id), 600)
        wait_for("the pause", lambda: "paused after epoch 1" in logs_text(api, job_id), 60)
        assert kill_job_processes(server.home, job_id)
        job = api.wait_job(job_id, timeout=300)
        text = logs_text(api, job_id)
        assert job.state == "succeeded", text

        # tf.keras on TensorFlow, in the environment built from PyPI over the platform.
        assert "tensorflow 2.20.0 keras backend tensorflow" in text
        assert "building as uid" in text and "tensorflow-cpu==2.20.0" in text
        # Resumed: the second attempt restored epoch 1's weights and optimizer, trained
        # only epoch 2.
        first, second = store.attempts(job_id)
        assert (first.state, first.exit_reason) == (AttemptState.FAILED, ExitReason.SIGNALED)
        assert second.state is AttemptState.SUCCEEDED
        assert "restored the Keras model and optimizer after epoch 1" in text
        metrics = api.job_metrics(job_id)
        assert steps_by_attempt(metrics, "loss") == {1: [1], 2: [2]}
        assert {"accuracy", "val_loss", "val_accuracy", "test_accuracy"} <= set(metrics)
        assert store.checkpoint_step(job_id) == 2
        assert job.evaluation is not None and job.evaluation["accuracy"] > 0.5
        assert {a.name for a in job.artifacts} >= {"spec.json", "weights.safetensors", "model.onnx"}

        predicted = json.loads(text.split("tensorflow predicts ", 1)[1].splitlines()[0])
        images = np.array(predicted["x"], dtype=np.uint8)
        want = [str(c) for c in predicted["classes"]]
        api.register_model("seed-tf", job_id)
        version = api.get_model_version("seed-tf:1")
        assert version.spec["architecture"] == "custom"
        assert version.spec["input"] == {
            "name": "input",
            "datatype": "UINT8",
            "shape": [-1, 8, 8, 1],
        }
        api.create_deployment("seed-tf", "seed-tf:1")
        api.wait_deployment("seed-tf", timeout=120)
        try:
            answer = api.infer("seed-tf", images)
            assert answer["probabilities"].shape == (len(images), 10)
            assert [str(label) for label in answer["label"]] == want
            assert [
                api.predict("seed-tf", data=png_bytes(im[..., 0]))["label"] for im in images
            ] == want
        finally:
            api.delete_deployment("seed-tf")
