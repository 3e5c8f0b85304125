"""``POST /v2/models/{name}[/versions/{v}]/explain``: the prediction and its attributions.

The body is an infer request (OIP v2 JSON, options in its ``parameters``) or what
``/predict`` takes (an image file, ``{"text"}``, ``{"features"}``; options in the query
string, or a JSON body's ``parameters``). Explanations never starve predictions: they run
one at a time on a thread of their own, off the batcher, with at most ``max_pending``
requests waiting or running (503 + Retry-After past that), at most ``max_rows`` rows each,
and the method's knobs bounded (nimbus.explain.options). The PyTorch module is rebuilt from
the model's spec.json and weights.safetensors on the first explanation (nothing
unpickled); a script's torch module from the graph its job wrote (program.json +
program.safetensors, nimbus.modelformat.program: no pickle, no generated code); a model
without either (a scikit-learn model, a script whose module torch.export could not trace:
its ONNX graph alone) is explained through the replica's own backend by the methods that
need no gradients (occlusion, Shapley sampling).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.explain.attributions import Explanation, explain
from nimbus.explain.options import INTEGRATED_GRADIENTS, ExplainOptions, parse_options
from nimbus.explain.render import overlay_png, word_scores
from nimbus.modelformat.files import PROGRAM_FILE, WEIGHTS_FILE
from nimbus.modelformat.program import Program, ProgramError
from nimbus.names import whole_number
from nimbus.serving.errors import Overloaded, ProtocolError
from nimbus.serving.metrics import ServingMetrics
from nimbus.serving.predictor import Predictor
from nimbus.serving.protocol import InferCodec, parse_header_length
from nimbus.serving.tensors import encode_json

DEFAULT_MAX_PENDING = 4
DEFAULT_MAX_ROWS = 16
KINDS = {Task.IMAGE: "image", Task.TEXT: "text", Task.TABULAR: "tabular"}
_PROTOCOL_KEYS = ("binary_data_output",)  # request parameters that are the protocol's


class Explainer:
    """The explain route of one replica."""

    def __init__(
        self,
        name: str,
        version: str,
        model_dir: Path,
        predictor: Predictor,
        codec: InferCodec,
        metrics: ServingMetrics,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.name, self.version = name, version
        self.model_dir = model_dir
        self.predictor = predictor
        self.codec = codec
        self.metrics = metrics
        self.max_pending = max_pending
        self.max_rows = max_rows
        self.kind = KINDS[predictor.spec.task]
        # With PyTorch weights, every method on the rebuilt module (built on the explain
        # thread); a script's model on its program (program.json, docs/model-format.md);
        # without, the backend's forward pass (model inputs -> probabilities).
        self.program = (model_dir / PROGRAM_FILE).is_file()
        builtin = predictor.spec.architecture != "custom"
        self.gradients = self.program or (builtin and (model_dir / WEIGHTS_FILE).is_file())
        self._pool: ThreadPoolExecutor | None = None
        self._module: Any = None  # torch.nn.Module, built on the explain thread
        self._pending = 0
        self._lock = threading.Lock()
        self._encoder = predictor.encoder
        metrics.watch_explain_queue(lambda: self._pending)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def reply(
        self, body: bytes, headers: Mapping[bytes, bytes], query: bytes
    ) -> tuple[bytes, str]:
        """The answer's JSON and which form it took (``infer`` or ``predict``)."""
        if self.predictor.imported is not None:
            raise InvalidInput(
                "explanations are not available for imported models: Nimbus knows neither "
                "their gradients nor their preprocessing beyond /predict (docs/import.md)"
            )
        length = parse_header_length(headers.get(b"inference-header-content-length"), len(body))
        if _is_infer_request(body, headers, length):
            request = self.codec.parse(body, length)
            raw = request.inputs[self.predictor.input.name]
            given = {k: v for k, v in request.parameters.items() if k not in _PROTOCOL_KEYS}
            answer = await self._explain(raw, given, request_id=request.id)
            return answer, "infer"
        given = _query_options(query)
        if self.kind != "image":
            params = _json_parameters(body)
            given = {**given, **params}
        raw = self._example(body)
        return await self._explain(raw, given, request_id=None, friendly=True), "predict"

    def _example(self, body: bytes) -> np.ndarray:
        """A /predict body as the client tensor (text stays text: its words are shown)."""
        if self.kind == "text":
            payload = orjson.loads(body) if body.strip() else None
            text = payload.get("text") if isinstance(payload, dict) else None
            if not isinstance(text, str):
                raise InvalidInput('send {"text": "..."} to explain a text model')
            return np.array([text.encode("utf-8")], dtype=object)
        return self.predictor.example_from_body(body)

    async def _explain(
        self,
        raw: np.ndarray,
        given: Mapping[str, Any],
        *,
        request_id: str | None,
        friendly: bool = False,
    ) -> bytes:
        overlay = given.get("overlay", False)
        if not isinstance(overlay, bool) or (overlay and self.kind != "image"):
            raise InvalidInput("overlay must be true or false, for image models", field="overlay")
        options = parse_options(
            self.kind,
            {k: v for k, v in given.items() if k != "overlay"},
            self.predictor.spec.classes,
        )
        rows = raw.shape[0]
        if rows > self.max_rows:
            raise ProtocolError(f"explain takes at most {self.max_rows} rows, not {rows}")
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded(
                    f"the explain queue is full ({self.max_pending} requests): retry later"
                )
            self._pending += 1
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._thread(), self._answer, raw, options, overlay, request_id, friendly
            )
        finally:
            with self._lock:
                self._pending -= 1
            self.metrics.observe_explain(time.perf_counter() - started)

    def _thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nimbus-explain")
        return self._pool

    def _answer(
        self,
        raw: np.ndarray,
        options: ExplainOptions,
        overlay: bool,
        request_id: str | None,
        friendly: bool,
    ) -> bytes:
        if self._module is None:
            from nimbus.runtime.architectures import load_torch_model

            if self.program:
                try:
                    self._module = Program.load(self.model_dir)
                except ProgramError as exc:
                    raise InvalidInput(f"the model's gradient program is refused: {exc}") from exc
            elif self.gradients:
                self._module = load_torch_model(self.model_dir)
            else:
                self._module = self.predictor.run
        words: list[list[str]] = []
        inputs = raw
        if self._encoder is not None:
            try:
                texts = [item.decode("utf-8") for item in raw.reshape(-1)]
            except UnicodeDecodeError:
                raise ProtocolError("BYTES inputs must be UTF-8 text") from None
            words = [self._encoder.words(text) for text in texts]
            inputs = self._encoder.encode(texts)
        found = explain(
            self._module, self.kind, inputs, options, dict(self.predictor.spec.preprocessing)
        )
        method = options.method_for(self.kind, self.gradients)
        overlays = (
            [overlay_png(np.asarray(image), found.attributions[i]) for i, image in enumerate(raw)]
            if overlay
            else []
        )
        if friendly:
            return orjson.dumps(self._friendly(found, method, words, overlays))
        response = self._infer_response(found, method, words, overlays, request_id)
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)

    def _scores(self, found: Explanation, words: list[list[str]]) -> list[list[tuple[str, float]]]:
        assert self._encoder is not None
        return [
            word_scores(self._encoder, text, found.attributions[i]) for i, text in enumerate(words)
        ]

    def _infer_response(
        self,
        found: Explanation,
        method: str,
        words: list[list[str]],
        overlays: list[bytes],
        request_id: str | None,
    ) -> dict[str, Any]:
        classes = np.array(self.predictor.spec.classes, dtype=object)
        tensors: list[tuple[str, str, np.ndarray]] = [
            ("probabilities", "FP32", found.probabilities),
            ("label", "BYTES", classes[found.probabilities.argmax(axis=1)]),
            ("target", "BYTES", classes[found.targets]),
        ]
        if self._encoder is not None:
            # Each text's words and their scores, padded to the longest ("" and 0).
            scored = self._scores(found, words)
            width = max((len(s) for s in scored), default=0)
            names = np.full((len(scored), width), b"", dtype=object)
            values = np.zeros((len(scored), width), dtype=np.float32)
            for i, pairs in enumerate(scored):
                for j, (word, score) in enumerate(pairs):
                    names[i, j], values[i, j] = word.encode("utf-8"), score
            tensors += [("words", "BYTES", names), ("attributions", "FP32", values)]
        else:
            tensors.append(("attributions", "FP32", found.attributions))
        if found.delta is not None:
            tensors.append(("completeness_delta", "FP32", found.delta))
        if overlays:
            encoded = [base64.b64encode(png) for png in overlays]
            tensors.append(("overlay", "BYTES", np.array(encoded, dtype=object)))
        response: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "parameters": {"method": method},
        }
        if request_id is not None:
            response["id"] = request_id
        response["outputs"] = [
            {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}
            for name, datatype, arr in tensors
            for data in [encode_json(arr, datatype)]
        ]
        if overlays:
            response["parameters"]["overlay"] = "base64-encoded PNG images"
        return response

    def _friendly(
        self, found: Explanation, method: str, words: list[list[str]], overlays: list[bytes]
    ) -> dict[str, Any]:
        """The /predict-style answer for one example."""
        spec = self.predictor.spec
        row = found.probabilities[0]
        answer: dict[str, Any] = {
            "label": spec.classes[int(np.argmax(row))],
            "probabilities": {c: float(p) for c, p in zip(spec.classes, row, strict=True)},
            "target": spec.classes[int(found.targets[0])],
            "method": method,
        }
        if self.kind == "text":
            answer["words"] = [[w, s] for w, s in self._scores(found, words)[0]]
        elif self.kind == "tabular":
            names = list(spec.preprocessing.get("features") or [])
            values = found.attributions[0].tolist()
            keys = names if len(names) == len(values) else [str(i) for i in range(len(values))]
            answer["features"] = dict(zip(keys, values, strict=True))
        else:
            answer["attributions"] = found.attributions[0].tolist()
        if found.delta is not None and method == INTEGRATED_GRADIENTS:
            answer["completeness_delta"] = float(found.delta[0])
        if overlays:
            answer["overlay_png"] = base64.b64encode(overlays[0]).decode("ascii")
        return answer


def _is_infer_request(body: bytes, headers: Mapping[bytes, bytes], length: int | None) -> bool:
    """An OIP infer body (a JSON object with ``inputs``), not a /predict one."""
    if length is not None:
        return True
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type.startswith(b"image/") or not body.lstrip().startswith(b"{"):
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and "inputs" in payload


def _json_parameters(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    params = payload.get("parameters", {}) if isinstance(payload, dict) else {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return params


def _query_options(query: bytes) -> dict[str, Any]:
    """Options from a query string: whole numbers as ints, true/false as booleans."""
    given: dict[str, Any] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        number = whole_number(value)
        if number is not None:
            given[key] = number
        elif value in ("true", "false"):
            given[key] = value == "true"
        else:
            try:
                given[key] = float(value)
            except ValueError:
                given[key] = value
    return given
