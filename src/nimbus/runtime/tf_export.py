"""A TensorFlow program's model (``tf.keras``: Keras 3 on the TensorFlow backend) to ONNX.

TensorFlow and tf2onnx are not the platform's: a job gets them from its requirements
(``--requirements`` holding ``tensorflow-cpu`` and ``tf2onnx``, docs/environments.md), and
this module imports them only when it exports such a model, in the job's process where the
model lives. The model is traced as a ``tf.function`` over the raw input (its batch axis
dynamic) and converted with ``tf2onnx.convert.from_function``: tf2onnx's ``from_keras``
predates Keras 3, whose models it does not read, while a ``tf.function`` is plain
TensorFlow. The graph outputs ``probabilities`` (a softmax added when the model ends in
logits), and ONNX Runtime must match TensorFlow's own output within 1e-4, as for torch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from nimbus.errors import InvalidInput
from nimbus.modelformat.export import ONNX_OPSET, verify_onnx_against

BACKEND = "tensorflow"
_NEEDS = {
    "tensorflow": "tensorflow-cpu",
    "tf2onnx": "tf2onnx",
}


def is_tensorflow_keras(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model on the TensorFlow backend (``tf.keras``)."""
    keras = sys.modules.get("keras")
    return (
        keras is not None and isinstance(model, keras.Model) and keras.backend.backend() == BACKEND
    )


def scores(model: Any, batch: np.ndarray) -> np.ndarray:
    """The model's output on ``batch`` (inference mode), as float32 numpy."""
    return np.array(model(batch, training=False), dtype=np.float32)


def weights(model: Any) -> dict[str, np.ndarray]:
    """The model's variables by Keras path (``sequential/dense/kernel``), as numpy."""
    keras = sys.modules["keras"]
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value)) for v in model.weights}


def export_onnx(model: Any, example: np.ndarray, softmax: bool, path: Path) -> None:
    """Write ``model`` (plus a softmax when ``softmax``) as ONNX at ``path``: input
    ``input`` like ``example`` with a dynamic batch axis, output ``probabilities``; raises
    ExportError unless ONNX Runtime matches TensorFlow within 1e-4 on ``example``."""
    tf = _module("tensorflow")
    tf2onnx = _module("tf2onnx")
    signature = (tf.TensorSpec([None, *example.shape[1:]], tf.as_dtype(example.dtype), "input"),)

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def probabilities(x: Any) -> dict[str, Any]:
        out = tf.cast(model(x, training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(out, axis=1) if softmax else out}

    proto, _ = tf2onnx.convert.from_function(
        probabilities, input_signature=signature, opset=ONNX_OPSET
    )
    onnx_bytes = proto.SerializeToString()
    path.write_bytes(onnx_bytes)

    def reference(batch: np.ndarray) -> np.ndarray:
        return np.asarray(probabilities(tf.constant(batch))["probabilities"])

    verify_onnx_against(reference, onnx_bytes, example, "TensorFlow")


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InvalidInput(
            f"saving a TensorFlow model needs {name}, which is not importable ({exc}): add "
            f"{_NEEDS[name]} to the job's requirements (--pip {_NEEDS[name]}, "
            "docs/environments.md)"
        ) from exc
