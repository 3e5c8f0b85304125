from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nimbus.errors import ExportError, InvalidInput
from nimbus.modelformat.export import Probabilities, export_model, verify_onnx, verify_onnx_against
from nimbus.modelformat.text import TextEncoder
from nimbus.runtime.architectures import load_torch_model
from nimbus.runtime.data import DataSplits
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import TrainResult, train
from tests.runtime import synthetic

torch.set_num_threads(1)

BUILTINS: dict[str, tuple[Callable[[], DataSplits], str, str]] = {
    "cnn": (synthetic.tiny_images, "tensor(uint8)", "UINT8"),
    "text": (synthetic.text, "tensor(int64)", "INT64"),
    "mlp": (synthetic.tabular, "tensor(float)", "FP32"),
}


@pytest.fixture(scope="module", params=sorted(BUILTINS))
def trained(request: pytest.FixtureRequest) -> tuple[str, TrainResult]:
    name = request.param
    return name, train(name, BUILTINS[name][0](), {"epochs": 1}, MemoryReporter())


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _probabilities(result: TrainResult, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(result.model(torch.from_numpy(x)), dim=1).numpy()


def test_model_directory_matches_the_format(
    trained: tuple[str, TrainResult], tmp_path: Path
) -> None:
    name, result = trained
    export_model(result.model, result.spec, result.example_input, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "spec.json",
        "weights.safetensors",
    ]
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec == result.spec and spec["format_version"] == 1
    assert spec["architecture"] == name and spec["onnx_input"]["datatype"] == BUILTINS[name][2]
    for path in tmp_path.iterdir():  # nothing in the directory is a pickle
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(path.read_bytes())

    session = _session(tmp_path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name) == ("input", BUILTINS[name][1], "probabilities")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == spec["onnx_input"]["shape"][1:]

    x = _more_inputs(name, result)
    (got,) = session.run(["probabilities"], {"input": x})
    assert got.shape == (len(x), len(spec["classes"]))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, _probabilities(result, x), rtol=0, atol=1e-4)


def test_torch_model_reloads_without_pickle(
    trained: tuple[str, TrainResult], tmp_path: Path
) -> None:
    name, result = trained
    export_model(result.model, result.spec, result.example_input, tmp_path)
    loaded = load_torch_model(tmp_path)
    assert not loaded.training
    x = torch.from_numpy(_more_inputs(name, result))
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_text_serving_path_tokenises_like_training(tmp_path: Path) -> None:
    result = train("text", synthetic.text(), {}, MemoryReporter())
    export_model(result.model, result.spec, result.example_input, tmp_path)
    spec = json.loads((tmp_path / "spec.json").read_text())
    encoder = TextEncoder.from_preprocessing(spec["preprocessing"])
    ids = encoder.encode(["We ate pizza and cheese", "The robot wrote code", "zzz unknown"])
    (probs,) = _session(tmp_path).run(["probabilities"], {"input": ids})
    assert [spec["classes"][i] for i in probs[:2].argmax(axis=1)] == ["food", "tech"]


def test_mismatch_between_runtimes_is_an_error(tmp_path: Path) -> None:
    result = train("mlp", synthetic.tabular(), {"epochs": 1}, MemoryReporter())
    export_model(result.model, result.spec, result.example_input, tmp_path)
    onnx_bytes = (tmp_path / "model.onnx").read_bytes()
    with torch.no_grad():
        for p in result.model.parameters():
            p.add_(0.5)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(Probabilities(result.model).eval(), onnx_bytes, result.example_input)


def test_example_input_must_fit_the_spec(tmp_path: Path) -> None:
    result = train("cnn", synthetic.tiny_images(), {"epochs": 1}, MemoryReporter())
    bad = {
        "dtype": result.example_input.astype(np.float32),
        "shape": result.example_input[:, :4],
        "empty": result.example_input[:0],
    }
    for example in bad.values():
        with pytest.raises(InvalidInput):
            export_model(result.model, result.spec, example, tmp_path)
    fewer = {**result.spec, "classes": ["only", "two"]}
    with pytest.raises(InvalidInput, match="classes"):
        export_model(result.model, fewer, result.example_input, tmp_path)


def test_missing_or_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"spec\.json"):
        load_torch_model(tmp_path)
    result = train("mlp", synthetic.tabular(), {"epochs": 1, "hidden": "8"}, MemoryReporter())
    export_model(result.model, result.spec, result.example_input, tmp_path)
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["arch_params"]["hidden"] = [16]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(InvalidInput, match="weights do not fit"):
        load_torch_model(tmp_path)


def _more_inputs(name: str, result: TrainResult) -> np.ndarray:
    """The example batch plus rows that exercise the edges of preprocessing."""
    x = result.example_input
    if name == "mlp":
        edge = np.array([[np.nan] * 5, [np.inf, -np.inf, 0, 1e6, -1e6]], dtype=np.float32)
        return np.concatenate([x, edge])
    if name == "text":
        return np.concatenate([x, np.zeros((1, x.shape[1]), np.int64)])  # all padding
    return np.concatenate([x, np.full((1, *x.shape[1:]), 255, np.uint8)])


def test_any_framework_is_checked_against_onnx_runtime(tmp_path: Path) -> None:
    """A TensorFlow model's export is checked the same way: its own output (a function of
    the batch) against ONNX Runtime's, within 1e-4, on the batch and on its first row."""
    result = train("mlp", synthetic.tabular(), {"epochs": 1}, MemoryReporter())
    export_model(result.model, result.spec, result.example_input, tmp_path)
    onnx_bytes = (tmp_path / "model.onnx").read_bytes()
    wrapped = Probabilities(result.model).eval()

    def own(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(wrapped(torch.from_numpy(batch)).numpy())

    verify_onnx_against(own, onnx_bytes, result.example_input, "TensorFlow")
    with pytest.raises(ExportError, match=r"differs from TensorFlow by 0.0005 \(batch 1\)"):
        verify_onnx_against(
            lambda b: own(b) + (5e-4 if len(b) == 1 else 0),
            onnx_bytes,
            result.example_input,
            "TensorFlow",
        )
