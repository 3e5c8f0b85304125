"""nr.KerasCallback and nr.save_model with Keras 3 on the torch backend (local mode)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file

from nimbus import runtime as nr
from nimbus.errors import InvalidInput
from nimbus.runtime import api, tf_export

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
# Keras on torch 2.13 with numpy 2 warns from inside Keras (np.array on a tensor).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def small_model(seed: int) -> Any:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(6, 6, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def weights(model: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.weights]


def fit(model: Any, epochs: int) -> None:
    data = nr.dataset()
    model.fit(
        np.array(data.train.x),
        np.array(data.train.y),
        epochs=epochs,
        batch_size=8,
        initial_epoch=nr.keras_initial_epoch(),
        callbacks=[nr.KerasCallback()],
        verbose=0,
    )


def test_keras_callback_checkpoints_and_resumes(local: Path, capsys: Any) -> None:
    assert nr.keras_initial_epoch() == 0
    first = small_model(seed=1)
    fit(first, epochs=2)
    out = capsys.readouterr().out
    assert "step 1  accuracy" in out and "step 2  accuracy" in out
    trained, iterations = weights(first), int(first.optimizer.iterations)

    api.activate(None)  # a later attempt
    assert nr.keras_initial_epoch() == 2
    second = small_model(seed=2)
    callback = nr.KerasCallback()
    callback.set_model(second)
    callback.on_train_begin()
    for got, want in zip(weights(second), trained, strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(second.optimizer.iterations) == iterations

    fit(second, epochs=3)
    out = capsys.readouterr().out
    assert "step 3  accuracy" in out and "step 1  accuracy" not in out
    assert api.session().checkpoint_step == 3


def test_save_model_takes_a_keras_model(local: Path) -> None:
    model = small_model(seed=0)
    data = nr.dataset()
    model_dir = nr.save_model(model, np.array(data.train.x[:4]))
    assert model_dir is not None
    spec = json.loads((model_dir / "spec.json").read_text())
    assert spec["input"] == {"name": "input", "datatype": "UINT8", "shape": [-1, 6, 6, 3]}
    x = np.array(data.test.x)
    (got,) = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"input": x})
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    names = {v.path for v in model.weights}  # "dense/kernel", "dense/bias" (numbered per process)
    assert set(load_file(model_dir / "weights.safetensors")) == names and len(names) == 2


def test_a_tensorflow_model_needs_tensorflow_and_tf2onnx_from_the_requirements(
    tmp_path: Path,
) -> None:
    """The TensorFlow export (tf_export) runs only on Keras 3's TensorFlow backend; where
    TensorFlow or tf2onnx is missing it says which requirement to add."""
    model = small_model(seed=0)
    assert not tf_export.is_tensorflow_keras(model)  # Keras on torch: the torch export
    assert not tf_export.is_tensorflow_keras(torch.nn.Linear(2, 2))
    example = np.zeros((2, 6, 6, 3), dtype=np.uint8)
    with pytest.raises(InvalidInput, match=r"needs tensorflow.*--pip tensorflow-cpu"):
        tf_export.export_onnx(model, example, False, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
