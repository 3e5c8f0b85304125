"""``nimbus models import`` end to end (docs/import.md): a Caffe2-zoo model that ships inside
the ``onnx`` wheel (resnet50, whose input is ``gpu_0/data_0``) imported through the CLI into
the real server shared with test_models.py, carded as imported, deployed with a real replica,
and answering over OIP v2 what the wheel ships as its output; a refused import is one clear
line."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.cli.conftest import Nimbus, Registry
from tests.modelformat.test_imported import graph_bytes, zoo_case

MODEL = "zoo-resnet"


def test_import_card_deploy_and_serve_a_zoo_model(
    nimbus: Nimbus, registry: Registry, tmp_path: Path
) -> None:
    cli = nimbus
    token = registry.server.admin_token
    cli.env.update(NIMBUS_URL=registry.server.url, NIMBUS_TOKEN=token)
    data, feeds, expected = zoo_case("resnet50")
    ((input_name, x),) = feeds.items()
    assert input_name == "gpu_0/data_0"
    path = tmp_path / "resnet50.onnx"
    path.write_bytes(data)
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"class {i}, the {i}th\n" for i in range(1000)))
    argv = ["models", "import", MODEL, str(path), "--task", "image-classification"]
    argv += ["--classes", str(classes), "--scale", "1/255", "--mean", "0.485,0.456,0.406"]
    argv += ["--std", "0.229,0.224,0.225"]
    version = cli.json(*argv)
    assert (version["version"], version["lineage"], version["job"]) == (1, "imported", None)
    spec = version["spec"]
    assert spec["input"] == {"name": input_name, "datatype": "FP32", "shape": [-1, 3, 224, 224]}
    assert spec["classes"][1] == "class 1, the 1th"  # commas kept: one name a line
    assert spec["imported"]["file"]["name"] == "resnet50.onnx"
    assert cli.json(*argv)["version"] == 1  # the same file and options: the same version
    assert "imported (no job)" in cli("models", "show", f"{MODEL}:1").stdout

    card = cli.json("models", "card", f"{MODEL}:1")
    assert card["model_details"]["lineage"] == "imported" and card["model_details"]["job"] is None
    assert card["evaluation"]["available"] is False
    assert "onnx.checker.check_model(full_check=True)" in card["imported"]["checks"]
    markdown = cli("models", "card", f"{MODEL}:1").stdout
    assert "No evaluation exists" in markdown and "## Import" in markdown

    endpoint = cli("deploy", "zoo", f"{MODEL}:1", "--max-batch-size", "4").stdout.strip()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=endpoint, headers=auth, timeout=60) as http:
            metadata = http.get("/v2/models/zoo").json()
            assert metadata["inputs"] == [
                {"name": input_name, "datatype": "FP32", "shape": [-1, 3, 224, 224]}
            ]
            own = "gpu_0/softmax_1"
            body = {
                "inputs": [
                    {
                        "name": input_name,
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": x.reshape(-1).tolist(),
                    }
                ],
                "outputs": [{"name": own}, {"name": "probabilities"}, {"name": "label"}],
            }
            answer = http.post("/v2/models/zoo/infer", json=body)
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o for o in answer.json()["outputs"]}
            assert outputs[own]["shape"] == list(expected.shape)
            got = np.array(outputs[own]["data"], np.float32).reshape(expected.shape)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
            np.testing.assert_allclose(
                np.array(outputs["probabilities"]["data"]), expected.reshape(-1), atol=1e-4
            )

            photo = io.BytesIO()
            Image.new("RGB", (300, 200), (200, 30, 90)).save(photo, format="PNG")
            predicted = http.post("/v2/models/zoo/predict", content=photo.getvalue())
            assert predicted.status_code == 200, predicted.text
            assert predicted.json()["label"] in spec["classes"]
            assert len(predicted.json()["probabilities"]) == 1000
            why = http.post("/v2/models/zoo/explain", content=photo.getvalue())
            assert why.status_code == 400 and "imported models" in why.json()["error"]
    finally:
        cli("deployments", "delete", "zoo")
        deadline = time.monotonic() + 30
        while cli.json("deployments", "list")["deployments"] and time.monotonic() < deadline:
            time.sleep(0.2)

    # Bad options are refused over REST before a byte of the model is read.
    url = f"{registry.server.url}/api/v1/models/{MODEL}/imports"
    for query, message in (
        ({"task": "image", "classes": ["a"], "size": "big"}, "invalid size 'big'"),
        ({"task": "tabular", "classes": ["a"], "scale": "2"}, "apply to image models only"),
        ({"task": "image"}, "no classes"),
    ):
        answer = httpx.post(
            url, params=query, content=data, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 400 and message in answer.json()["error"]["message"]

    hostile = tmp_path / "custom.onnx"
    hostile.write_bytes(graph_bytes(domain="com.example"))
    refused = cli(
        "models", "import", MODEL, str(hostile), "--task", "image", "--classes", "a,b,c", code=2
    )
    assert "custom operator domain 'com.example'" in refused.stderr
