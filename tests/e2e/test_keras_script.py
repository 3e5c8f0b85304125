"""A Keras 3 script written as every tutorial writes it (``import keras`` on its first line,
nothing about backends) runs as a job on a real server: Keras picks PyTorch, not TensorFlow
(which is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimbus.client import Client
from tests.e2e.conftest import logs_text, script

pytestmark = [pytest.mark.slow]

TUTORIAL = """\
import keras
import numpy as np

from nimbus import runtime as nr

print("keras backend:", keras.backend.backend())
data = nr.dataset()
x = np.asarray(data.train.x, dtype="float32") / 255.0
y = np.asarray(data.train.y)
x_test = np.asarray(data.test.x, dtype="float32") / 255.0
y_test = np.asarray(data.test.y)

model = keras.Sequential(
    [
        keras.Input(shape=x.shape[1:]),
        keras.layers.Conv2D(16, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(len(data.classes), activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=int(nr.params.get("epochs", 4)), batch_size=32, verbose=0)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
nr.log(1, test_loss=loss, test_accuracy=accuracy)
"""


def test_a_script_that_imports_keras_first_trains_on_torch(
    api: Client, digits: str, tmp_path: Path
) -> None:
    tutorial = script(tmp_path, "tutorial", TUTORIAL)
    job = api.wait_job(api.submit_job(digits, tutorial, params={"epochs": "4"}).id, timeout=300)
    text = logs_text(api, job.id)
    assert job.state == "succeeded", text
    assert "keras backend: torch" in text
    (accuracy,) = api.job_metrics(job.id)["test_accuracy"]
    assert accuracy.value is not None and accuracy.value > 0.8, accuracy
