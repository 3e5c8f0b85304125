"""The ``nr`` API in local mode, custom model export, and the light package import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nimbus import runtime as nr
from nimbus.errors import InvalidInput
from nimbus.modelformat.text import build_encoder
from nimbus.runtime import api
from nimbus.runtime.custom import evaluate_model_dir
from tests.runtime import synthetic


class Flat(nn.Module):
    def __init__(self, inputs: int, classes: int, softmax: bool = False) -> None:
        super().__init__()
        self.linear, self.softmax = nn.Linear(inputs, classes), softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1).float() / 255)
        return torch.softmax(out, dim=1) if self.softmax else out


def test_local_params_dataset_and_log(local: Path, capsys: Any) -> None:
    assert nr.params == {"epochs": 3, "optimizer": "adam"}
    data = nr.dataset()
    assert data.task == "image-classification" and data.classes == ["c0", "c1", "c2"]
    assert data.train.x.dtype == np.uint8 and data.train.x.shape[1:] == (6, 6, 3)
    assert isinstance(data.train.x, np.memmap) and data.train.y.dtype == np.int64
    x, y = data.train.torch()[0]
    assert x.dtype == torch.uint8 and x.shape == (6, 6, 3) and y.dtype == torch.int64
    assert len(data.train.torch()) == len(data.train) == 27
    nr.log(1, loss=0.5, accuracy=0.75)
    assert "step 1  loss 0.5  accuracy 0.75" in capsys.readouterr().out


def test_text_items_are_strings(tmp_path: Path) -> None:
    data = synthetic.text(n=40)
    view = api.Dataset.of(data).train.torch()
    x, y = view[0]
    assert isinstance(x, str) and x == str(data.train.x[0]) and int(y) == int(data.train.y[0])


def test_local_checkpoint_and_restore(local: Path) -> None:
    assert nr.restore() is None
    nr.checkpoint({"epoch": 1, "w": torch.arange(3.0), "opt": {0: {"step": 2}}})
    nr.log(2, loss=0.1)
    nr.checkpoint({"epoch": 2, "w": torch.ones(2)})
    api.activate(None)  # a fresh process, as far as nr can tell
    state = nr.restore()
    assert state is not None and state["epoch"] == 2 and torch.equal(state["w"], torch.ones(2))
    assert api.session().checkpoint_step == 2
    assert (local / "checkpoint.safetensors").is_file()
    api.activate(None)
    nr.restore()
    nr.checkpoint({"epoch": 3})  # one past the restored step by default
    assert api.session().checkpoint_step == 3


def test_save_model_exports_a_verified_model_dir(local: Path) -> None:
    data = nr.dataset()
    torch.manual_seed(0)
    model = Flat(6 * 6 * 3, 3).train()
    model_dir = nr.save_model(model, data.train.x[:4])
    assert model.training  # put back as it was
    assert model_dir == local / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.onnx",
        "program.json",  # the gradient program (nimbus.modelformat.program)
        "program.safetensors",
        "spec.json",
        "weights.safetensors",
    ]
    spec = json.loads((model_dir / "spec.json").read_text())
    assert spec["architecture"] == "custom" and spec["classes"] == ["c0", "c1", "c2"]
    assert spec["preprocessing"] == {"kind": "image", "height": 6, "width": 6, "channels": 3}
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    x = np.array(data.test.x)
    (got,) = session.run(None, {"input": x})
    want = torch.softmax(model(torch.from_numpy(x)), dim=1).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    evaluation = evaluate_model_dir(model_dir, api.session().data)
    assert evaluation["support"] == len(data.test)
    bins = evaluation["calibration"]["bins"]  # from the ONNX graph's probabilities
    assert sum(b["count"] for b in bins) == len(data.test)


def test_a_model_ending_in_softmax_is_not_softmaxed_twice(local: Path) -> None:
    data = nr.dataset()
    model = Flat(6 * 6 * 3, 3, softmax=True)
    model_dir = nr.save_model(model, data.train.x[:4])
    assert model_dir is not None
    x = np.array(data.test.x)
    (got,) = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"input": x})
    want = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


class Branchy(Flat):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if out.sum() > 0 else -out  # data-dependent: torch.export cannot trace it


def test_a_model_torch_export_cannot_trace_is_saved_without_gradients(
    local: Path, capsys: Any
) -> None:
    data = nr.dataset()
    model_dir = nr.save_model(Branchy(6 * 6 * 3, 3), data.train.x[:4])
    assert model_dir is not None and (model_dir / "model.onnx").is_file()
    assert not (model_dir / "program.json").exists()
    assert "explanations: occlusion/Shapley only, no gradient program: torch.export could " in (
        capsys.readouterr().out
    )


def test_save_model_wants_the_raw_input(local: Path) -> None:
    data = nr.dataset()
    model = Flat(6 * 6 * 3, 3)
    with pytest.raises(InvalidInput, match="raw images, uint8"):
        nr.save_model(model, data.train.x[:4].astype(np.float32))
    with pytest.raises(InvalidInput, match="one score per class"):
        nr.save_model(Flat(6 * 6 * 3, 5), data.train.x[:4])
    with pytest.raises(InvalidInput, match=r"nn\.Module, a Keras 3 model or a TensorFlow"):
        nr.save_model(object(), data.train.x[:4])


def test_text_models_need_the_encoder(tmp_path: Path) -> None:
    data = synthetic.text(n=40)
    encoder = build_encoder(data.train.x, max_len=8)
    session = api.Session(
        params={},
        reporter=api.LocalReporter(tmp_path),
        load_data=lambda: data,
        model_dir=tmp_path / "model",
    )
    api.activate(session)
    try:
        model = nn.Sequential(
            nn.Embedding(encoder.vocab_size, 4), nn.Flatten(), nn.Linear(32, len(data.classes))
        )
        ids = encoder.encode(data.train.x[:4])
        with pytest.raises(InvalidInput, match="preprocessing"):
            nr.save_model(model, ids)
        nr.save_model(model, ids, preprocessing=encoder.preprocessing())
        spec = json.loads((tmp_path / "model" / "spec.json").read_text())
        assert spec["input"]["datatype"] == "BYTES" and spec["onnx_input"]["shape"] == [-1, 8]
        assert evaluate_model_dir(tmp_path / "model", data)["support"] == len(data.test)
    finally:
        api.activate(None)


def test_evaluate_records_the_result(local: Path) -> None:
    data = nr.dataset()
    scores = np.eye(3)[data.test.y]
    result = nr.evaluate(data.test.y, scores)
    assert result["accuracy"] == 1.0 and api.session().evaluation == result
    assert result["calibration"]["ece"] == 0.0  # rows of probabilities: all sure, all right
    logits = 5 * scores - 1  # not probabilities: no calibration
    assert "calibration" not in nr.evaluate(data.test.y, logits)


def test_dataset_outside_a_job_needs_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIMBUS_DATASET_DIR", raising=False)
    monkeypatch.delenv("NIMBUS_JOB_TOKEN", raising=False)
    monkeypatch.delenv("NIMBUS_PARAMS", raising=False)
    api.activate(None)
    try:
        assert nr.params == {}
        with pytest.raises(InvalidInput, match="NIMBUS_DATASET_DIR"):
            nr.dataset()
    finally:
        api.activate(None)


def test_the_package_stays_light() -> None:
    code = (
        "import sys\n"
        "import nimbus.runtime.hyperparams\n"
        "assert 'torch' not in sys.modules, 'params pulled in torch'\n"
        "from nimbus import runtime as nr\n"
        "assert 'torch' not in sys.modules and 'nimbus.runtime.api' not in sys.modules\n"
        "import nimbus.runtime.checkpoints\n"
        "from nimbus.runtime.hyperparams import validate_params\n"
        "assert isinstance(nr.params, dict) and callable(nr.checkpoint)\n"
        "assert nr.checkpoint.__module__ == 'nimbus.runtime.api'\n"
        "assert 'keras' not in sys.modules\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
