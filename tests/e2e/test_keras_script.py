"""Scripts' own models as jobs on a real server. A Keras 3 script written as every tutorial
writes it (``import keras`` on its first line, nothing about backends): Keras picks PyTorch,
not TensorFlow (which is not installed). A torch module, trained, registered, deployed and
explained with Integrated Gradients: the job exported its graph (program.json), the replica
runs it; a text module likewise, on its token embeddings (examples/torch_text.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nimbus.client import Client
from tests.e2e.conftest import logs_text, script
from tests.runtime import synthetic

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


TRAIN = """\
import torch
from torch import nn

from nimbus import runtime as nr

class Net(nn.Module):
    def __init__(self, shape, classes):
        super().__init__()
        height, width, channels = shape
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.linear = nn.Linear(4 * (height // 2) * (width // 2), classes)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).float() / 255
        return self.linear(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))

data = nr.dataset()
torch.manual_seed(0)
model = Net(data.train.x.shape[1:], len(data.classes))
x, y = torch.from_numpy(data.train.x[:512]), torch.from_numpy(data.train.y[:512])
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(20):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
nr.save_model(model, data.train.x[:4])
"""


def test_a_scripts_module_is_explained_with_integrated_gradients(
    api: Client, digits: str, tmp_path: Path
) -> None:
    job = api.wait_job(api.submit_job(digits, script(tmp_path, "mine", TRAIN)).id, timeout=300)
    text = logs_text(api, job.id)
    assert job.state == "succeeded", text
    assert "explanations: integrated gradients available" in text
    model = api.register_model("mine", job.id)
    api.create_deployment("mine", f"mine:{model.version}")
    api.wait_deployment("mine", timeout=120)
    try:
        folder = tmp_path / "data"
        api.download_dataset(digits, folder)
        image = np.load(folder / "test_x.npy")[0]
        png = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(png, format="PNG")
        found = api.explain("mine", data=png.getvalue(), steps=64)
        assert found["method"] == "integrated_gradients"
        assert np.asarray(found["attributions"]).shape == image.shape
        assert abs(found["completeness_delta"]) < 1e-2
    finally:
        api.delete_deployment("mine")


def test_a_scripts_text_module_is_explained_per_word_with_integrated_gradients(
    api: Client, tmp_path: Path
) -> None:
    """examples/torch_text.py as a job: its program embeds the token ids once, so the
    deployment answers Integrated Gradients on the embeddings, one score per word."""
    data = synthetic.text(160)
    rows = [*data.train.x, *data.val.x, *data.test.x]
    labels = [data.classes[int(i)] for i in (*data.train.y, *data.val.y, *data.test.y)]
    path = tmp_path / "topics.csv"
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([("text", "label"), *zip(rows, labels, strict=True)])
    dataset = api.upload_dataset("topics", path, task="text-classification")
    example = Path(__file__).resolve().parents[2] / "examples" / "torch_text.py"
    submitted = api.submit_job(f"topics:{dataset.version}", example, params={"epochs": "3"})
    job = api.wait_job(submitted.id, timeout=300)
    text = logs_text(api, job.id)
    assert job.state == "succeeded", text
    assert "explanations: integrated gradients available" in text
    model = api.register_model("topics", job.id)
    api.create_deployment("topics", f"topics:{model.version}")
    api.wait_deployment("topics", timeout=120)
    try:
        found = api.explain("topics", text="the team scored a goal", steps=64)
        assert found["method"] == "integrated_gradients"
        assert [w for w, _ in found["words"]] == ["the", "team", "scored", "a", "goal"]
        assert abs(found["completeness_delta"]) < 1e-2
    finally:
        api.delete_deployment("topics")
