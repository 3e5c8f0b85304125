"""End to end: the real server (uvicorn, httptools, uvloop) on a port, driven by
``tritonclient.http`` itself and by raw httpx for every error path."""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
import uvicorn
from PIL import Image

from nimbus.modelformat.spec import ModelSpec
from nimbus.modelformat.text import TextEncoder
from nimbus.serving.app import InferenceApp, create_app, uvicorn_config
from tests.serving.conftest import IMAGE_SHAPE

MAX_BODY = 64 * 1024


@contextmanager
def running(app: InferenceApp) -> Iterator[str]:
    """Serve ``app`` on an ephemeral port in a thread; yields ``host:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def image_url(image_model_dir: Path) -> Iterator[str]:
    app = create_app(image_model_dir, "cnn", 1, max_body_bytes=MAX_BODY, max_image_pixels=10_000)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def text_url(text_model_dir: Path) -> Iterator[str]:
    with running(create_app(text_model_dir, "text", "2", runtime="torch")) as url:
        yield url


def reference(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    return np.asarray(session.run(["probabilities"], {session.get_inputs()[0].name: x})[0])


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def test_health_and_metadata_with_tritonclient(image_url: str) -> None:
    client = triton.InferenceServerClient(image_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "nimbus" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("cnn", "1")
    assert model["name"] == "cnn" and model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 6, 6, 1]}]
    assert [o["name"] for o in model["outputs"]] == ["probabilities", "label"]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_with_tritonclient_json_and_binary(
    image_url: str, image_model_dir: Path, binary: bool
) -> None:
    client = triton.InferenceServerClient(image_url)
    x = images(5)
    inp = triton.InferInput("input", list(x.shape), "UINT8").set_data_from_numpy(x, binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer("cnn", [inp], model_version="1", outputs=outputs, request_id="q7")
    expected = reference(image_model_dir, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    classes = np.array(ModelSpec.load(image_model_dir).classes)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == classes[expected.argmax(1)].tolist()
    assert result.get_response()["id"] == "q7"


def test_infer_default_outputs_binary_and_gzip_request(
    image_url: str, image_model_dir: Path
) -> None:
    client = triton.InferenceServerClient(image_url)
    x = images(3, seed=1)
    inp = triton.InferInput("input", list(x.shape), "UINT8").set_data_from_numpy(x)
    result = client.infer("cnn", [inp], request_compression_algorithm="gzip")
    head = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in head["outputs"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), reference(image_model_dir, x), atol=1e-5
    )


def test_text_model_bytes_in_json_and_binary(text_url: str, text_model_dir: Path) -> None:
    client = triton.InferenceServerClient(text_url)
    texts = np.array([b"Good movie, great plot", b"awful AWFUL bad", "n\xe9ant".encode()])
    spec = ModelSpec.load(text_model_dir)
    ids = TextEncoder.from_preprocessing(dict(spec.preprocessing)).encode(
        [t.decode() for t in texts]
    )
    expected = reference(text_model_dir, ids)
    for binary in (False, True):
        inp = triton.InferInput("text", [3], "BYTES").set_data_from_numpy(
            texts.astype(object), binary
        )
        out = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("text", [inp], outputs=out)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        assert result.as_numpy("label") is None
    assert client.get_model_metadata("text")["platform"] == "pytorch"


def test_concurrent_requests_are_batched_and_each_gets_its_rows(
    image_url: str, image_model_dir: Path
) -> None:
    x = images(40, seed=2)
    expected = reference(image_model_dir, x)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{image_url}") as client:
            return await asyncio.gather(
                *(
                    client.post("/v2/models/cnn/infer", content=infer_body(x[i : i + 1]))
                    for i in range(len(x))
                )
            )

    for i, response in enumerate(asyncio.run(fire())):
        assert response.status_code == 200, response.text
        got = orjson.loads(response.content)["outputs"][0]["data"]
        np.testing.assert_allclose(got, expected[i], atol=1e-5)
    metrics = httpx.get(f"http://{image_url}/metrics").text
    assert 'nimbus_inference_requests_total{model="cnn",route="infer",status="200"}' in metrics
    assert "nimbus_inference_batch_size_bucket" in metrics
    assert 'nimbus_inference_queue_depth{model="cnn"} 0.0' in metrics


def infer_body(x: np.ndarray, **changes: object) -> bytes:
    tensor = {"name": "input", "datatype": "UINT8", "shape": list(x.shape), "data": x.tolist()}
    return orjson.dumps({"inputs": [tensor | changes]})


ERRORS = [
    ("/v2/models/other/infer", infer_body(images(1)), 404, "unknown model 'other'"),
    ("/v2/models/cnn/versions/9/infer", infer_body(images(1)), 404, "has no version '9'"),
    ("/v2/models/cnn/explanation", b"{}", 404, "no route"),
    ("/v2/models/cnn/infer", infer_body(images(1), name="x"), 400, "unknown input 'x'"),
    ("/v2/models/cnn/infer", infer_body(images(1), shape=[1, 36]), 400, "has shape [1, 36]"),
    ("/v2/models/cnn/infer", infer_body(images(1), datatype="FP32"), 400, "datatype FP32"),
    ("/v2/models/cnn/infer", infer_body(images(2), shape=[1, 6, 6, 1]), 400, "data holds 72"),
    ("/v2/models/cnn/infer", b'{"inputs": [', 400, "malformed JSON"),
    ("/v2/models/cnn/infer", b'{"inputs": [{"data": [NaN]}]}', 400, "NaN and Infinity"),
    ("/v2/models/cnn/infer", b"\0" * (MAX_BODY + 1), 413, "above the limit"),
    ("/v2/models/cnn/predict", b"not an image", 400, "not a PNG or JPEG image"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), ERRORS)
def test_error_paths_over_http(
    image_url: str, path: str, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(f"http://{image_url}{path}", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) and message in error


def test_float_model_refuses_nan_and_serves_features(tabular_model_dir: Path) -> None:
    with running(create_app(tabular_model_dir, "mlp")) as url:
        client = triton.InferenceServerClient(url)
        x = np.array([[0.5, -1.0, 2.0], [1.0, np.nan, 0.0]], dtype=np.float32)
        inp = triton.InferInput("features", [2, 3], "FP32").set_data_from_numpy(x)
        with pytest.raises(triton.InferenceServerException) as caught:
            client.infer("mlp", [inp])
        assert caught.value.status() == "400"
        assert "element 4 is nan" in caught.value.message()
        good = x[:1]
        inp = triton.InferInput("features", [1, 3], "FP32").set_data_from_numpy(good)
        got = client.infer("mlp", [inp]).as_numpy("probabilities")
        np.testing.assert_allclose(got, reference(tabular_model_dir, good), atol=1e-5)
        answer = httpx.post(
            f"http://{url}/v2/models/mlp/predict",
            json={"features": {"a": 0.5, "b": -1.0, "c": 2.0}},
        ).json()
        np.testing.assert_allclose(list(answer["probabilities"].values()), got[0], atol=1e-5)


def test_streamed_oversized_body_and_wrong_method(image_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\0" * 4096

    response = httpx.post(f"http://{image_url}/v2/models/cnn/infer", content=chunks())
    assert response.status_code == 413
    response = httpx.get(f"http://{image_url}/v2/models/cnn/infer")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert httpx.get(f"http://{image_url}/nowhere").status_code == 404


def png(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=(200, 30, 90) if mode == "RGB" else 128).save(buffer, fmt)
    return buffer.getvalue()


def test_predict_images_and_text(image_url: str, text_url: str, image_model_dir: Path) -> None:
    response = httpx.post(f"http://{image_url}/v2/models/cnn/predict", content=png((20, 14)))
    assert response.status_code == 200, response.text
    answer = response.json()
    gray = np.asarray(Image.open(io.BytesIO(png((20, 14)))).convert("L").resize((6, 6)))
    expected = reference(image_model_dir, gray.reshape(1, *IMAGE_SHAPE))[0]
    assert answer["label"] == ["cat", "dog", "eel"][int(expected.argmax())]
    np.testing.assert_allclose(list(answer["probabilities"].values()), expected, atol=1e-5)
    jpeg = httpx.post(f"http://{image_url}/v2/models/cnn/predict", content=png((6, 6), "L", "JPEG"))
    assert jpeg.status_code == 200
    huge = httpx.post(f"http://{image_url}/v2/models/cnn/predict", content=png((200, 200)))
    assert huge.status_code == 413 and "pixels" in huge.json()["error"]

    text = httpx.post(f"http://{text_url}/v2/models/text/predict", json={"text": "good movie"})
    assert text.status_code == 200 and set(text.json()["probabilities"]) == {"neg", "pos"}
    bad = httpx.post(f"http://{text_url}/v2/models/text/predict", json={"txt": 1})
    assert bad.status_code == 400 and "text" in bad.json()["error"]


def test_bearer_token_guards_everything_but_health(image_model_dir: Path) -> None:
    app = create_app(image_model_dir, "cnn", auth=lambda token: token == "s3cret")
    body = infer_body(images(1))
    with running(app) as url:
        base = f"http://{url}"
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        denied = httpx.post(f"{base}/v2/models/cnn/infer", content=body)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{base}/v2/models/cnn", headers=wrong).status_code == 401
        assert httpx.get(f"{base}/v2/models/secret", headers=wrong).status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/v2/models/cnn/infer", content=body, headers=good).is_success
        client = triton.InferenceServerClient(url)
        assert client.get_model_metadata("cnn", headers=good)["name"] == "cnn"
    public = create_app(image_model_dir, "cnn", auth=lambda token: False, public=True)
    with running(public) as url:
        assert httpx.post(f"http://{url}/v2/models/cnn/infer", content=body).is_success


def test_gzip_bomb_is_refused(image_url: str) -> None:
    bomb = gzip.compress(b"\0" * (MAX_BODY * 4))
    response = httpx.post(
        f"http://{image_url}/v2/models/cnn/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 413
