"""The two example programs (examples/) run as jobs through the entry point and a fake
control plane: trained, resumed, exported, uploaded, scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nimbus.modelformat.text import TextEncoder
from nimbus.runtime.job_api import FENCED_EXIT_CODE
from tests.runtime import synthetic
from tests.runtime.helpers import Harness, run_main

# Keras's predict() on torch 2.13 with numpy 2 warns from inside Keras, once per batch.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_keras_cnn_example_trains_resumes_and_exports(harness: Harness) -> None:
    job_api = harness.job_api
    code = (EXAMPLES / "keras_cnn.py").read_bytes()
    job_api.job(
        synthetic.digits(),
        code=code,
        entry="keras_cnn.py",
        params={"epochs": "3", "batch_size": "32"},
    )
    job_api.fence_after_checkpoints = 1
    assert run_main(harness) == FENCED_EXIT_CODE

    job_api.fence_after_checkpoints = None
    second = job_api.new_attempt()
    assert run_main(harness, second) == 0
    assert [step for step, _ in job_api.series("loss", second)] == [2, 3]  # epoch 1 kept
    assert {"accuracy", "val_loss", "val_accuracy"} <= set(job_api.metrics[-2][2])
    (evaluation,) = job_api.results
    assert evaluation["accuracy"] >= 0.85
    spec = json.loads(job_api.artifacts["spec.json"])
    assert spec["architecture"] == "custom"
    assert spec["input"]["datatype"] == "UINT8" and spec["input"]["shape"] == [-1, 8, 8, 1]
    session = ort.InferenceSession(job_api.artifacts["model.onnx"])
    image = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    (probabilities,) = session.run(None, {"input": image})
    assert probabilities.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # no softmax twice


def test_torch_text_example_trains_and_exports(harness: Harness) -> None:
    job_api = harness.job_api
    code = (EXAMPLES / "torch_text.py").read_bytes()
    job_api.job(synthetic.text(), code=code, entry="torch_text.py", params={"epochs": "8"})
    assert run_main(harness) == 0
    assert [step for step, _ in job_api.series("train_loss")] == list(range(1, 9))
    assert [step for step, _, _ in job_api.checkpoints] == list(range(1, 9))
    (evaluation,) = job_api.results
    assert evaluation["accuracy"] >= 0.9
    spec = json.loads(job_api.artifacts["spec.json"])
    assert spec["input"] == {"name": "input", "datatype": "BYTES", "shape": [-1]}
    assert spec["onnx_input"]["datatype"] == "INT64"
    encoder = TextEncoder.from_preprocessing(spec["preprocessing"])
    session = ort.InferenceSession(job_api.artifacts["model.onnx"])
    (probabilities,) = session.run(None, {"input": encoder.encode(["the team scored a goal"])})
    assert spec["classes"][int(probabilities.argmax())] == "sport"
    # Its gradient program embeds the token ids once: integrated gradients in the replica.
    program = json.loads(job_api.artifacts["program.json"])
    assert program["input_dtype"] == "int64"
    assert [n["op"] for n in program["nodes"]].count("aten.embedding.default") == 1
