"""Loading model directories, both backends, pre/postprocessing, and the app under overload."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from nimbus.errors import InvalidInput, PayloadTooLarge
from nimbus.modelformat.spec import ModelSpec
from nimbus.serving.app import InferenceApp
from nimbus.serving.batcher import Batcher, BatchPolicy
from nimbus.serving.errors import ProtocolError
from nimbus.serving.images import decode_image
from nimbus.serving.metrics import ServingMetrics
from nimbus.serving.predictor import Predictor


def test_torch_and_onnx_backends_agree(image_model_dir: Path, text_model_dir: Path) -> None:
    x = np.random.default_rng(3).integers(0, 256, (7, 6, 6, 1), dtype=np.uint8)
    onnx = Predictor.load(image_model_dir)
    torch = Predictor.load(image_model_dir, runtime="torch", threads=1)
    np.testing.assert_allclose(onnx.run(x), torch.run(x), atol=1e-5)
    read_only = np.frombuffer(x.tobytes(), dtype=np.uint8).reshape(x.shape)
    np.testing.assert_allclose(torch.run(read_only), onnx.run(read_only), atol=1e-5)

    text = Predictor.load(text_model_dir)
    ids = text.prepare(np.array([b"Good, GOOD movie!", b"unseen words"], dtype=object))
    assert ids.dtype == np.int64 and ids.shape == (2, 8)
    assert ids[0, :3].tolist() == [2, 2, 6] and ids[1, :3].tolist() == [1, 1, 0]
    with pytest.raises(ProtocolError, match="UTF-8"):
        text.prepare(np.array([b"\xff"], dtype=object))


def test_postprocess_names_labels(image_model_dir: Path) -> None:
    predictor = Predictor.load(image_model_dir)
    probs = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]], dtype=np.float32)
    out = predictor.postprocess(probs, ["label", "probabilities"])
    assert out["label"].tolist() == ["dog", "cat"] and out["probabilities"] is probs
    assert predictor.describe(probs[0])["label"] == "dog"


def _copy(src: Path, dst: Path, **spec_changes: object) -> Path:
    shutil.copytree(src, dst)
    spec = json.loads((dst / "spec.json").read_text()) | spec_changes
    (dst / "spec.json").write_text(json.dumps(spec))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 2}, "unsupported spec format_version"),
        ({"classes": []}, "no classes"),
        ({"task": "poetry"}, "invalid spec.json"),
        ({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]}, "no 'prob"),
        ({"input": {"name": "input", "datatype": "UINT8", "shape": [1, 6, 6, 1]}}, "batch"),
        ({"onnx_input": {"name": "x", "datatype": "UINT8", "shape": [-1, 6, 6, 1]}}, "takes"),
    ],
)
def test_broken_model_dirs_are_refused(
    image_model_dir: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    broken = _copy(image_model_dir, tmp_path / "m", **changes)
    with pytest.raises(InvalidInput, match=message):
        Predictor.load(broken)


def test_missing_files_and_unknown_runtime(image_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a model directory"):
        ModelSpec.load(tmp_path)
    with pytest.raises(InvalidInput, match="unknown runtime 'tf'"):
        Predictor.load(image_model_dir, runtime="tf")
    bare = _copy(image_model_dir, tmp_path / "bare")
    (bare / "model.onnx").unlink()
    (bare / "weights.safetensors").unlink()
    for runtime in ("onnx", "torch"):
        with pytest.raises(InvalidInput, match="does not exist"):
            Predictor.load(bare, runtime=runtime)
    (bare / "model.onnx").write_bytes(b"garbage")
    (bare / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(InvalidInput, match="cannot be loaded"):
        Predictor.load(bare)
    with pytest.raises(InvalidInput, match="does not fit the cnn spec"):
        Predictor.load(bare, runtime="torch")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_decode_image_converts_and_resizes() -> None:
    rgb = Image.new("RGB", (10, 4), (255, 0, 0))
    got = decode_image(_encode(rgb, "PNG"), height=6, width=5, channels=1, max_pixels=100)
    assert got.shape == (6, 5, 1) and got.dtype == np.uint8
    assert int(got[0, 0, 0]) == np.asarray(rgb.convert("L"))[0, 0]
    gray = Image.new("L", (6, 6), 7)
    got = decode_image(_encode(gray, "JPEG"), height=6, width=6, channels=3, max_pixels=100)
    assert got.shape == (6, 6, 3)
    with pytest.raises(PayloadTooLarge, match="101 pixels"):
        decode_image(
            _encode(Image.new("L", (101, 1)), "PNG"), height=6, width=6, channels=1, max_pixels=100
        )
    with pytest.raises(InvalidInput, match="not a PNG or JPEG"):
        decode_image(_encode(gray, "GIF"), height=6, width=6, channels=1, max_pixels=100)
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        decode_image(_encode(gray, "PNG")[:45], height=6, width=6, channels=1, max_pixels=100)


class _GatedBackend:
    platform = "test"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(5)
        return np.full((inputs.shape[0], 3), 1 / 3, dtype=np.float32)


def test_full_queue_answers_503_with_retry_after(image_model_dir: Path) -> None:
    backend = _GatedBackend()
    predictor = Predictor(ModelSpec.load(image_model_dir), backend)
    batcher = Batcher(predictor.run, BatchPolicy(4, 0.002), max_queued_rows=1)
    app = InferenceApp(predictor, "cnn", "1", batcher=batcher, metrics=ServingMetrics("cnn"))
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "UINT8", "shape": [1, 6, 6, 1], "data": [0] * 36}
            ]
        }
    ).encode()

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            post = lambda: client.post("/v2/models/cnn/infer", content=body)  # noqa: E731
            first = asyncio.ensure_future(post())
            await asyncio.to_thread(backend.entered.wait, 5)
            second = asyncio.ensure_future(post())
            while batcher.queued_rows == 0:
                await asyncio.sleep(0.001)
            third = await post()
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert "queue is full" in third.json()["error"]
            backend.release.set()
            assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        await batcher.close()
        assert not app.ready

    asyncio.run(scenario())
    assert b'route="infer",status="503"' in app.metrics.render()
