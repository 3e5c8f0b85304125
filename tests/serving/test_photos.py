"""A photo folder from ingest to /predict: the same photo gives the same tensor.

Real pieces throughout: ingest on a zip of mixed photos, the built-in cnn trained on it and
exported as a model directory, a real replica (uvicorn) serving it on a port.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from nimbus.datasets.domain import IngestLimits, IngestOptions
from nimbus.datasets.ingest import ingest
from nimbus.modelformat.export import export_model
from nimbus.runtime.data import DataSplits
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train
from nimbus.serving.app import create_app
from nimbus.serving.predictor import Predictor
from tests.helpers_photos import photo_members, photo_zip
from tests.serving.test_server import running

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    model_dir: Path
    members: dict[str, bytes]
    rows: np.ndarray  # the prepared images, in archive order
    url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("photos")
    members = photo_members(12)
    source = photo_zip(root / "photos.zip", members)
    work = root / "work"
    work.mkdir()
    # no val or test split: the train split keeps every image, in archive order
    options = IngestOptions(image_size=(24, 32), val_fraction=0.0, test_fraction=0.0)
    prepared = ingest(source, "photos.zip", options, IngestLimits(), work)
    data = DataSplits.load(
        work,
        prepared.task,
        prepared.classes,
        image_transform=prepared.schema["transform"],
    )
    result = train("cnn", data, {"epochs": 1, "batch_size": 8}, MemoryReporter())
    model_dir = root / "model"
    export_model(result.model, result.spec, result.example_input, model_dir)
    rows = np.array(data.train.x)
    with running(create_app(model_dir, "photos")) as url:
        yield Served(model_dir, members, rows, f"http://{url}/v2/models/photos")


def test_the_transform_travels_from_the_version_to_the_spec(served: Served) -> None:
    spec = Predictor.load(served.model_dir).spec
    assert spec.input.shape == (-1, 24, 32, 3)
    assert spec.preprocessing["transform"]["height"] == 24
    assert spec.preprocessing["transform"]["fit"] == "crop"


def test_predict_fits_a_photo_to_the_tensor_ingest_made(served: Served) -> None:
    predictor = Predictor.load(served.model_dir)
    for row, data in zip(served.rows, served.members.values(), strict=True):
        tensor = predictor.example_from_body(data)
        assert tensor.dtype == np.uint8 and tensor.tobytes() == row.tobytes()


def test_predict_over_http_equals_infer_on_the_ingested_tensor(served: Served) -> None:
    with httpx.Client() as client:
        for row, data in zip(served.rows, served.members.values(), strict=True):
            predicted = client.post(f"{served.url}/predict", content=data)
            assert predicted.status_code == 200, predicted.text
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "UINT8",
                        "shape": [1, *row.shape],
                        "data": row.reshape(-1).tolist(),
                    }
                ],
                "outputs": [{"name": "probabilities"}],
            }
            inferred = client.post(f"{served.url}/infer", json=body)
            assert inferred.status_code == 200, inferred.text
            want = np.asarray(inferred.json()["outputs"][0]["data"], dtype=np.float32)
            got = np.asarray(list(predicted.json()["probabilities"].values()), np.float32)
            np.testing.assert_array_equal(got, want)
