"""The registration check (no torch in it: files, spec, ONNX graph, sample inferences,
accuracy on a test split) and the parsing of model and version references."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nimbus.errors import InvalidInput
from nimbus.modelformat.export import export_model
from nimbus.modelformat.verify import check_model_dir, recorded_accuracy
from nimbus.runtime.architectures import build_model
from nimbus.services.models import VersionRef, parse_model_ref, parse_version_ref
from tests.helpers_models import image_model_dir, images, onnx_probabilities

VOCAB = ["<pad>", "<unk>", "good", "bad", "movie"]
TEXT_SPEC = {
    "format_version": 1,
    "task": "text-classification",
    "architecture": "text",
    "arch_params": {"vocab_size": len(VOCAB), "embed_dim": 4, "num_classes": 2},
    "classes": ["neg", "pos"],
    "input": {"name": "input", "datatype": "BYTES", "shape": [-1]},
    "onnx_input": {"name": "input", "datatype": "INT64", "shape": [-1, 6]},
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ],
    "preprocessing": {"kind": "text", "lowercase": True, "max_len": 6, "vocab": VOCAB},
}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_model_dir(tmp_path_factory.mktemp("check") / "cnn", 1)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TEXT_SPEC)).eval()
    directory = tmp_path_factory.mktemp("check") / "text"
    export_model(model, copy.deepcopy(TEXT_SPEC), np.ones((2, 6), dtype=np.int64), directory)
    return directory


def broken_copy(source: Path, target: Path, file: str, data: bytes) -> Path:
    shutil.copytree(source, target)
    (target / file).write_bytes(data)
    return target


def test_good_model_dirs_pass(image_dir: Path, text_dir: Path) -> None:
    assert check_model_dir(image_dir)["classes"] == ["cat", "dog", "eel"]
    assert check_model_dir(text_dir)["task"] == "text-classification"


def test_accuracy_on_the_test_split_must_match_the_recorded_one(
    image_dir: Path, text_dir: Path
) -> None:
    x, y = images(50, seed=3), np.arange(50) % 3
    accuracy = float(np.mean(onnx_probabilities(image_dir, x).argmax(axis=1) == y))
    check_model_dir(image_dir, test_split=(x, y), recorded_accuracy=accuracy)
    check_model_dir(image_dir, test_split=(x, y), recorded_accuracy=accuracy + 2 / 50)
    with pytest.raises(InvalidInput, match="do not belong together"):
        check_model_dir(image_dir, test_split=(x, y), recorded_accuracy=accuracy + 3 / 50)
    texts = np.array(["good movie", "bad movie", "good", "unknown words"])
    check_model_dir(text_dir, test_split=(texts, np.array([1, 0, 1, 0])), recorded_accuracy=0.5)
    assert recorded_accuracy({"accuracy": 0.9, "support": 50}, 50) == 0.9
    assert recorded_accuracy({"accuracy": 0.9, "support": 40}, 50) is None
    assert recorded_accuracy(None, 50) is None


def test_truncated_or_inconsistent_weights_are_refused(image_dir: Path, tmp_path: Path) -> None:
    weights = (image_dir / "weights.safetensors").read_bytes()
    cases = {
        "truncated": weights[:-4],
        "garbage": b"\x00" * 4,
        "header": len(weights).to_bytes(8, "little") + weights[8:],
    }
    for case, data in cases.items():
        broken = broken_copy(image_dir, tmp_path / case, "weights.safetensors", data)
        with pytest.raises(InvalidInput, match=r"weights\.safetensors"):
            check_model_dir(broken)


def test_onnx_that_does_not_fit_the_spec_is_refused(image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot be loaded"):
        check_model_dir(broken_copy(image_dir, tmp_path / "junk", "model.onnx", b"junk"))
    spec = json.loads((image_dir / "spec.json").read_text())
    renamed = copy.deepcopy(spec)
    renamed["onnx_input"]["name"] = "pixels"
    with pytest.raises(InvalidInput, match="takes 'input' UINT8"):
        check_model_dir(
            broken_copy(image_dir, tmp_path / "name", "spec.json", json.dumps(renamed).encode())
        )
    wider = copy.deepcopy(spec)
    wider["onnx_input"]["shape"] = wider["input"]["shape"] = [-1, 7, 6, 1]
    with pytest.raises(InvalidInput, match="does not fit"):
        check_model_dir(
            broken_copy(image_dir, tmp_path / "shape", "spec.json", json.dumps(wider).encode())
        )
    with pytest.raises(InvalidInput, match=r"spec\.json"):
        check_model_dir(broken_copy(image_dir, tmp_path / "spec", "spec.json", b"{"))


def test_model_and_version_references() -> None:
    assert parse_model_ref("digits") == ("digits", VersionRef())
    assert parse_model_ref("digits:3") == ("digits", VersionRef(version=3))
    assert parse_model_ref("digits:latest") == ("digits", VersionRef())
    assert parse_model_ref("digits@prod") == ("digits", VersionRef(alias="prod"))
    assert parse_version_ref("@prod") == VersionRef(alias="prod")
    assert [str(parse_version_ref(v)) for v in ("7", "latest", "@a")] == ["7", "latest", "@a"]
    for bad in ("digits:0", "digits:x", "Digits", "digits@", "digits@latest", "digits@12", ":1"):
        with pytest.raises(InvalidInput):
            parse_model_ref(bad)


def test_the_control_plane_never_imports_torch() -> None:
    """Registration checks and deployments run in the server, which must stay torch-free."""
    code = (
        "import sys, nimbus.server, nimbus.services.models, nimbus.services.deployments; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_control_plane_leaves_onnx_runtime_to_its_check_children() -> None:
    """Models are verified in a child process (ModelCheck): the server never loads ONNX
    Runtime, whose sessions would run a job's graph in its own process."""
    code = "import sys, nimbus.server; sys.exit('onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
