"""A loaded model ready to serve: spec + backend + pre- and postprocessing.

Client inputs are what the dataset held (``spec.input``); the backend takes ``spec.onnx_input``.
For images and tabular data they are the same tensor (preprocessing is in the graph); text is
tokenised here with the very encoder training used. Postprocessing adds the ``label`` output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from nimbus.datasets.domain import Task
from nimbus.datasets.imagefit import ImageFit
from nimbus.errors import InvalidInput
from nimbus.modelformat.dtypes import TensorSpec
from nimbus.modelformat.imported import image_input, scores_to_probabilities
from nimbus.modelformat.spec import LABEL, PROBABILITIES, ModelSpec
from nimbus.modelformat.text import TextEncoder
from nimbus.serving.backends import Backend, load_backend
from nimbus.serving.errors import ProtocolError
from nimbus.serving.images import decode_image, fit_upload

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class Predictor:
    """Turns client tensors into model inputs, runs batches, and names the results."""

    def __init__(
        self,
        spec: ModelSpec,
        backend: Backend,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.max_image_pixels = max_image_pixels
        self.input: TensorSpec = spec.input
        probabilities = spec.output(PROBABILITIES)
        label = next(
            (o for o in spec.outputs if o.name == LABEL), TensorSpec(LABEL, "BYTES", (-1,))
        )
        self.outputs: tuple[TensorSpec, ...] = (probabilities, label)
        # A model trained elsewhere (docs/import.md): the backend answers its own output's
        # scores, served under the output's own name too; probabilities are their softmax
        # unless the graph ends in one.
        self.imported = spec.imported
        self._scores = "probabilities"
        if self.imported is not None:
            own = tuple(o for o in spec.outputs if o.name not in (PROBABILITIES, LABEL))
            self.outputs = (probabilities, label, *own)
            self._scores = str(self.imported.get("scores", "logits"))
        self._classes = np.array(spec.classes, dtype=object)
        self._encoder = (
            TextEncoder.from_preprocessing(dict(spec.preprocessing))
            if spec.task is Task.TEXT and spec.imported is None
            else None
        )
        self._fit = _image_fit(spec)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        runtime: str = "onnx",
        threads: int = 1,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> Predictor:
        """Load a model directory (spec.json plus model.onnx or weights.safetensors)."""
        spec = ModelSpec.load(Path(model_dir))
        backend = load_backend(runtime, Path(model_dir), spec, threads)
        return cls(spec, backend, max_image_pixels=max_image_pixels)

    @property
    def encoder(self) -> TextEncoder | None:
        """A text model's encoder (the very one training used); None for other models."""
        return self._encoder

    @property
    def platform(self) -> str:
        return self.backend.platform

    def prepare(self, inputs: np.ndarray) -> np.ndarray:
        """Client tensor (``spec.input``, already validated) -> backend input."""
        if self._encoder is None:
            return _strings(inputs) if self.input.datatype == "BYTES" else inputs
        try:
            texts = [raw.decode("utf-8") for raw in inputs.reshape(-1)]
        except UnicodeDecodeError:
            raise ProtocolError(f"input '{self.input.name}': BYTES must be UTF-8 text") from None
        return self._encoder.encode(texts)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores for a batch of backend inputs (called by the batcher): probabilities,
        except for an imported model whose graph ends before its softmax."""
        return self.backend.run(batch)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """``[rows, classes]`` probabilities from what :meth:`run` answered."""
        return scores_to_probabilities(scores, self._scores)

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`run`, then :meth:`probabilities`."""
        return self.probabilities(self.run(batch))

    def postprocess(self, scores: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs: ``probabilities``, ``label`` = ``classes[argmax]`` and, for an
        imported model, its own output (the scores in that output's shape)."""
        out: dict[str, np.ndarray] = {}
        probabilities = self.probabilities(scores) if PROBABILITIES in names else scores
        for name in names:
            if name == LABEL:
                out[name] = self._classes[scores.argmax(axis=1)]
            elif name == PROBABILITIES:
                out[name] = probabilities
            else:
                shape = self._output_shape(name)
                out[name] = scores.reshape(len(scores), *shape[1:])
        return out

    def _output_shape(self, name: str) -> tuple[int, ...]:
        return next(o.shape for o in self.outputs if o.name == name)

    def example_from_body(self, body: bytes) -> np.ndarray:
        """A one-row backend input from a ``/predict`` body: an image file for image models,
        ``{"text": ...}`` for text, ``{"features": [...] or {name: value}}`` for tabular."""
        if self._fit is not None:
            return fit_upload(body, self._fit, max_pixels=self.max_image_pixels)[np.newaxis]
        if self.spec.task is Task.IMAGE and self.imported is not None:
            prep = self.spec.preprocessing
            pixels = decode_image(
                body,
                height=int(prep["height"]),
                width=int(prep["width"]),
                channels=int(prep["channels"]),
                max_pixels=self.max_image_pixels,
            )
            return image_input(pixels, prep, self.input.datatype)
        if self.spec.task is Task.IMAGE:
            _, height, width, channels = self.input.shape
            image = decode_image(
                body,
                height=height,
                width=width,
                channels=channels,
                max_pixels=self.max_image_pixels,
            )
            return image[np.newaxis]
        payload = _json_object(body)
        if self.spec.task is Task.TEXT:
            text = payload.get("text")
            if not isinstance(text, str):
                raise InvalidInput('send {"text": "..."} to a text model')
            if self._encoder is None:  # an imported graph that tokenises strings itself
                return np.array([text], dtype=object).reshape(1, *self.input.shape[1:])
            return self._encoder.encode([text])
        return self._features(payload.get("features"))

    def describe(self, scores: np.ndarray) -> dict[str, Any]:
        """The ``/predict`` answer for one row of scores (:meth:`run`'s)."""
        row = self.probabilities(scores.reshape(1, -1)).reshape(-1)
        return {
            "label": self.spec.classes[int(np.argmax(row))],
            "probabilities": {c: float(p) for c, p in zip(self.spec.classes, row, strict=True)},
        }

    def _features(self, features: Any) -> np.ndarray:
        count = self.input.shape[1]
        if isinstance(features, dict):
            names = list(self.spec.preprocessing.get("features") or [])
            missing = [n for n in names if n not in features]
            if not names or missing:
                raise InvalidInput(f"missing features: {missing or 'feature names unknown'}")
            features = [features[n] for n in names]
        if not isinstance(features, list) or len(features) != count:
            raise InvalidInput(f'send {{"features": [...]}} with {count} numbers')
        try:
            with np.errstate(over="ignore"):
                row = np.asarray(features, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInput("features must be numbers") from None
        if not np.isfinite(row).all():
            raise InvalidInput("features must be finite numbers")
        return row.reshape(1, count)


def _image_fit(spec: ModelSpec) -> ImageFit | None:
    """The image transform the spec records, checked against the model's input; None when
    the model has none (made before ingest recorded one, or not an image model)."""
    record = spec.image_transform
    if record is None:
        return None
    if not isinstance(record, dict):
        raise InvalidInput("invalid spec.json: preprocessing.transform must be an object")
    fit = ImageFit.from_record(record)
    if spec.input.shape[1:] != (fit.height, fit.width, fit.channels):
        raise InvalidInput(
            f"invalid spec.json: the image transform makes {fit.height}x{fit.width}x"
            f"{fit.channels} images but the input is {list(spec.input.shape[1:])}"
        )
    return fit


def _strings(inputs: np.ndarray) -> np.ndarray:
    """BYTES as the ``str`` objects ONNX Runtime takes for a string input."""
    try:
        texts = [raw.decode("utf-8") if isinstance(raw, bytes) else str(raw) for raw in inputs.flat]
    except UnicodeDecodeError:
        raise ProtocolError("BYTES inputs must be UTF-8 text") from None
    return np.array(texts, dtype=object).reshape(inputs.shape)


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object")
    return payload
