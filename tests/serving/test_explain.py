"""The explain route on a real replica server (uvicorn on a port): image, text and tabular
models, the OIP body and the /predict-style one, bad bodies refused with 4xx, and a full
explain queue answering 503 while predictions keep flowing."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from nimbus import runtime as nr
from nimbus.modelformat.text import build_encoder
from nimbus.runtime import api
from nimbus.serving.app import create_app
from tests.modelformat.test_program import Net, TinyText, TwoEmbeddings
from tests.runtime import synthetic
from tests.runtime.helpers import write_dataset
from tests.serving.conftest import IMAGE_SHAPE
from tests.serving.test_server import running


def outputs(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in answer["outputs"]}


def image_body(
    rows: int, shape: tuple[int, ...] = IMAGE_SHAPE, **parameters: Any
) -> dict[str, Any]:
    data = np.random.default_rng(0).integers(0, 256, (rows, *shape), dtype=np.uint8)
    return {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "datatype": "UINT8",
                "shape": [rows, *shape],
                "data": data.reshape(-1).tolist(),
            }
        ],
        "parameters": parameters,
    }


def test_an_image_model_explains_an_infer_request(image_model_dir: Path) -> None:
    app = create_app(image_model_dir, "cnn", 1)
    with running(app) as url, httpx.Client(base_url=f"http://{url}") as http:
        answer = http.post("/v2/models/cnn/explain", json=image_body(2, target="dog", overlay=True))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_name"] == "cnn" and body["id"] == "r1"
        assert body["parameters"]["method"] == "integrated_gradients"
        found = outputs(body)
        assert found["attributions"]["shape"] == [2, *IMAGE_SHAPE]
        assert found["target"]["data"] == ["dog", "dog"]
        assert found["probabilities"]["shape"] == [2, 3]
        # The prediction explained is the one infer gives.
        infer = http.post("/v2/models/cnn/versions/1/infer", json=image_body(2)).json()
        probabilities = np.array(outputs(infer)["probabilities"]["data"]).reshape(2, 3)
        explained = np.array(found["probabilities"]["data"]).reshape(2, 3)
        assert np.allclose(probabilities, explained, atol=1e-4)
        assert all(abs(d) < 0.05 for d in found["completeness_delta"]["data"])
        png = Image.open(io.BytesIO(base64.b64decode(found["overlay"]["data"][0])))
        assert png.size == (IMAGE_SHAPE[1], IMAGE_SHAPE[0])
        # A photo, as /predict takes it, with the options in the query string.
        buffer = io.BytesIO()
        Image.new("L", (12, 12), 200).save(buffer, format="PNG")
        photo = http.post(
            "/v2/models/cnn/explain?method=occlusion&window=2",
            content=buffer.getvalue(),
            headers={"content-type": "image/png"},
        )
        assert photo.status_code == 200, photo.text
        friendly = photo.json()
        assert friendly["method"] == "occlusion" and friendly["label"] in ("cat", "dog", "eel")
        assert np.array(friendly["attributions"]).shape == IMAGE_SHAPE
        # SmoothGrad: a sensitivity, with no completeness error to report.
        smooth = http.post("/v2/models/cnn/explain", json=image_body(1, method="smoothgrad"))
        assert smooth.status_code == 200, smooth.text
        assert smooth.json()["parameters"]["method"] == "smoothgrad"
        found = outputs(smooth.json())
        assert found["attributions"]["shape"] == [1, *IMAGE_SHAPE]
        assert "completeness_delta" not in found
        metrics = http.get("/metrics").text
        assert 'nimbus_explain_seconds_count{model="cnn"} 3.0' in metrics
        assert 'route="explain",status="200"' in metrics


def test_text_and_tabular_models_explain_words_and_features(
    text_model_dir: Path, tabular_model_dir: Path
) -> None:
    with (
        running(create_app(text_model_dir, "reviews", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        texts = ["Good movie, GREAT plot", "awful"]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
        answer = http.post("/v2/models/reviews/explain", json=body)
        assert answer.status_code == 200, answer.text
        found = outputs(answer.json())
        assert found["words"]["shape"] == [2, 4]
        assert found["words"]["data"][:4] == ["good", "movie", "great", "plot"]
        assert found["words"]["data"][4:] == ["awful", "", "", ""]
        assert found["attributions"]["data"][5:] == [0.0, 0.0, 0.0]
        friendly = http.post(
            "/v2/models/reviews/explain", json={"text": "bad plot", "parameters": {"steps": 8}}
        ).json()
        assert [w for w, _ in friendly["words"]] == ["bad", "plot"]
    with (
        running(create_app(tabular_model_dir, "churn", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        answer = http.post("/v2/models/churn/explain", json={"features": [1.0, 2.0, 3.0]})
        assert answer.status_code == 200, answer.text
        friendly = answer.json()
        assert friendly["method"] == "shapley" and set(friendly["features"]) == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("explain", image_body(1, method="shapley"), 400, "does not explain image inputs"),
        ("explain", image_body(1, steps=100_000), 400, "steps must be an integer from 1 to 256"),
        ("explain", image_body(1, target=7), 400, "neither a class (cat, dog, eel) nor a class"),
        ("explain", image_body(1, sigma=1), 400, "unknown explain parameter 'sigma'"),
        ("explain", image_body(1, overlay="yes"), 400, "overlay must be true or false"),
        ("explain", image_body(17), 400, "explain takes at most 16 rows, not 17"),
        ("explain?steps=0", None, 400, "steps must be an integer"),
        ("explain/more", image_body(1), 404, "no route"),
    ],
)
def test_bad_explain_requests_are_refused_naming_the_problem(
    image_model_dir: Path, path: str, body: dict[str, Any] | None, status: int, message: str
) -> None:
    app = create_app(image_model_dir, "cnn", 1)
    with running(app) as url, httpx.Client(base_url=f"http://{url}") as http:
        if body is None:
            buffer = io.BytesIO()
            Image.new("L", (6, 6), 10).save(buffer, format="PNG")
            answer = http.post(f"/v2/models/cnn/{path}", content=buffer.getvalue())
        else:
            answer = http.post(f"/v2/models/cnn/{path}", json=body)
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"]
        assert http.get("/v2/models/cnn/explain").status_code == 405


def test_a_full_explain_queue_answers_503_while_predictions_flow(
    image_model_dir: Path,
) -> None:
    """One explanation holds the explain thread (a slow, many-step one), one waits: the
    queue (2) is full, a third gets 503 with Retry-After, and infer answers meanwhile."""
    app = create_app(image_model_dir, "cnn", 1, max_explain_pending=2)
    slow = image_body(16, steps=256, method="integrated_gradients")
    assert app.explainer is not None
    gate = threading.Event()
    real = app.explainer._answer

    def held(*args: Any) -> bytes:
        gate.wait(30)  # the explain thread is busy until the test says
        return real(*args)

    app.explainer._answer = held  # type: ignore[method-assign,assignment]
    with running(app) as url:
        results: list[int] = []

        def explain() -> None:
            with httpx.Client(base_url=f"http://{url}", timeout=60) as http:
                results.append(http.post("/v2/models/cnn/explain", json=slow).status_code)

        threads = [threading.Thread(target=explain) for _ in range(2)]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=f"http://{url}") as http:
            for _ in range(100):
                if 'nimbus_explain_queue_depth{model="cnn"} 2.0' in http.get("/metrics").text:
                    break
                threading.Event().wait(0.05)
            refused = http.post("/v2/models/cnn/explain", json=image_body(1))
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "explain queue is full" in refused.json()["error"]
            for _ in range(5):  # predictions are not in the explanations' way
                assert http.post("/v2/models/cnn/infer", json=image_body(4)).status_code == 200
        gate.set()
        for thread in threads:
            thread.join(60)
    assert results == [200, 200]


def test_a_model_without_weights_is_explained_through_its_onnx_graph(
    image_model_dir: Path, text_model_dir: Path, tmp_path: Path
) -> None:
    """An ONNX-only model (a script's, a scikit-learn export) is explained by the methods
    that need no gradients, through the replica's own backend; Integrated Gradients is
    refused naming the ones it can have."""
    for source, name in ((image_model_dir, "cnn"), (text_model_dir, "reviews")):
        onnx_only = tmp_path / name
        onnx_only.mkdir()
        for file in ("spec.json", "model.onnx"):
            (onnx_only / file).write_bytes((source / file).read_bytes())
    with (
        running(create_app(tmp_path / "cnn", "cnn", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        answer = http.post("/v2/models/cnn/explain", json=image_body(2, window=2))
        assert answer.status_code == 200, answer.text
        assert answer.json()["parameters"]["method"] == "occlusion"
        assert outputs(answer.json())["attributions"]["shape"] == [2, *IMAGE_SHAPE]
        refused = http.post(
            "/v2/models/cnn/explain", json=image_body(1, method="integrated_gradients")
        )
        assert refused.status_code == 400
        assert "only its ONNX graph: use occlusion" in refused.json()["error"]
    with (
        running(create_app(tmp_path / "reviews", "reviews", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        friendly = http.post("/v2/models/reviews/explain", json={"text": "good plot"}).json()
        assert friendly["method"] == "occlusion"
        assert [w for w, _ in friendly["words"]] == ["good", "plot"]


def test_a_scripts_torch_module_gets_integrated_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nr.save_model writes the module's program; the replica explains it with Integrated
    Gradients by default, complete within 1e-2 at 64 steps, attributions of the input's
    shape, and the prediction the ONNX graph serves; SmoothGrad runs on it too."""
    monkeypatch.delenv("NIMBUS_JOB_TOKEN", raising=False)
    data = write_dataset(synthetic.tiny_images(), tmp_path / "data")  # [6, 6, 3], 3 classes
    monkeypatch.setenv("NIMBUS_DATASET_DIR", str(data))
    monkeypatch.setenv("NIMBUS_JOB_DIR", str(tmp_path / "run"))
    api.activate(None)
    try:
        torch.manual_seed(0)
        model_dir = nr.save_model(Net(), nr.dataset().train.x[:2])
    finally:
        api.activate(None)
    assert model_dir is not None and (model_dir / "program.json").is_file()
    with (
        running(create_app(model_dir, "mine", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        answer = http.post("/v2/models/mine/explain", json=image_body(2, (6, 6, 3), steps=64))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["parameters"]["method"] == "integrated_gradients"
        found = outputs(body)
        assert found["attributions"]["shape"] == [2, 6, 6, 3]
        assert all(abs(d) < 1e-2 for d in found["completeness_delta"]["data"])
        infer = http.post("/v2/models/mine/infer", json=image_body(2, (6, 6, 3))).json()
        served = np.array(outputs(infer)["probabilities"]["data"])
        assert np.allclose(served, found["probabilities"]["data"], atol=1e-4)
        # SmoothGrad runs on the program's gradients too.
        body = image_body(2, (6, 6, 3), method="smoothgrad", samples=8)
        smooth = http.post("/v2/models/mine/explain", json=body)
        assert smooth.status_code == 200, smooth.text
        gradients = np.array(outputs(smooth.json())["attributions"]["data"], dtype=float)
        assert gradients.size == 2 * 6 * 6 * 3 and np.abs(gradients).sum() > 0


def test_a_scripts_text_module_gets_integrated_gradients_per_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script's text module (token ids in) is explained with Integrated Gradients on its
    embedding by default: one score per word, as the built-in text model answers, complete
    within 1e-2 at 64 steps. One that embeds its ids twice gets no program and says why in
    the job log (then occlusion explains it, as any model without one: the ONNX-only test
    above)."""
    monkeypatch.delenv("NIMBUS_JOB_TOKEN", raising=False)
    data = write_dataset(synthetic.text(60), tmp_path / "data")
    monkeypatch.setenv("NIMBUS_DATASET_DIR", str(data))
    saved = []
    for run, module in (("twice", TwoEmbeddings), ("run", TinyText)):
        monkeypatch.setenv("NIMBUS_JOB_DIR", str(tmp_path / run))
        api.activate(None)
        try:
            torch.manual_seed(0)
            encoder = build_encoder(nr.dataset().train.x, max_len=16)
            ids = encoder.encode(nr.dataset().train.x[:4])
            model = module(encoder.vocab_size, len(nr.dataset().classes))
            saved.append(nr.save_model(model, ids, preprocessing=encoder.preprocessing()))
        finally:
            api.activate(None)
    twice_dir, model_dir = saved
    assert twice_dir is not None and not (twice_dir / "program.json").exists()
    assert "occlusion/Shapley only, no gradient program: a text model's program must embed " in (
        capsys.readouterr().out
    )
    assert model_dir is not None and (model_dir / "program.json").is_file()
    with (
        running(create_app(model_dir, "mine", 1)) as url,
        httpx.Client(base_url=f"http://{url}") as http,
    ):
        texts = ["the team scored a goal", "rain"]
        body = {
            "inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": texts}],
            "parameters": {"steps": 64},
        }
        answer = http.post("/v2/models/mine/explain", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["parameters"]["method"] == "integrated_gradients"
        found = outputs(answer.json())
        assert found["words"]["shape"] == [2, 5]
        assert found["words"]["data"][:6] == [*encoder.words(texts[0]), "rain"]
        assert all(abs(d) < 1e-2 for d in found["completeness_delta"]["data"])
        friendly = http.post("/v2/models/mine/explain", json={"text": "a goal"}).json()
        assert friendly["method"] == "integrated_gradients"
        assert [w for w, _ in friendly["words"]] == encoder.words("a goal")
