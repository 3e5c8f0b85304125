"""A fitted scikit-learn classifier as a model directory (docs/model-format.md).

``model.onnx`` comes from skl2onnx: the raw FP32 ``[-1, F]`` feature rows the ``mlp`` takes
in (a scaler, where the model has one, is part of the graph), one ``probabilities`` FP32
``[-1, classes]`` output. It is checked against ``predict_proba`` with ONNX Runtime before
the directory is complete. ``weights.safetensors`` holds no tensor (the graph holds the
trees and coefficients): serving these models is ONNX Runtime's. Nothing is pickled.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import sklearn
from safetensors.numpy import save_file
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.pipeline import Pipeline

from nimbus.datasets.domain import Task
from nimbus.errors import ExportError, InvalidInput
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from nimbus.runtime.builtins import FORMAT_VERSION

ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
TOLERANCE = 1e-4  # on probabilities, as the torch models' export check
PROBABILITIES = "probabilities"


def sklearn_spec(
    architecture: str,
    arch_params: dict[str, Any],
    classes: list[str],
    features: list[str],
) -> dict[str, Any]:
    """spec.json of a scikit-learn classifier on ``features`` (tabular data)."""
    signature = {"name": "input", "datatype": "FP32", "shape": [-1, len(features)]}
    return {
        "format_version": FORMAT_VERSION,
        "task": str(Task.TABULAR),
        "architecture": architecture,
        "arch_params": {**arch_params, "library": f"scikit-learn {sklearn.__version__}"},
        "classes": [str(c) for c in classes],
        "input": signature,
        "onnx_input": signature,
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "preprocessing": {"kind": "tabular", "features": list(features)},
    }


def onnx_bytes(estimator: Any, n_features: int) -> bytes:
    """The classifier as an ONNX graph: ``input`` FP32 ``[-1, F]`` in, only
    ``probabilities`` FP32 ``[-1, classes]`` out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skl2onnx's own deprecation notices
        graph = to_onnx(
            _as_converted(estimator),
            initial_types=[("input", FloatTensorType([None, n_features]))],
            options={"zipmap": False},
            target_opset=ONNX_OPSETS,
        )
    outputs = list(graph.graph.output)
    kept = [o for o in outputs if o.name == PROBABILITIES]
    if len(kept) != 1:
        raise ExportError(f"skl2onnx gave outputs {[o.name for o in outputs]}, no probabilities")
    del graph.graph.output[:]
    graph.graph.output.extend(kept)  # the label is the server's: classes[argmax]
    return bytes(graph.SerializeToString())


def _as_converted(estimator: Any) -> Any:
    """``estimator``, or a copy that skl2onnx converts to the same probabilities: for two
    classes its linear discriminant converter takes softmax(-d, d), the logistic of 2d,
    where scikit-learn's ``predict_proba`` is the logistic of d (the decision d halved)."""
    last = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    if not isinstance(last, LinearDiscriminantAnalysis) or len(last.classes_) != 2:
        return estimator
    converted = copy.deepcopy(estimator)
    halved = converted.steps[-1][1] if isinstance(converted, Pipeline) else converted
    halved.coef_ = halved.coef_ / 2
    halved.intercept_ = halved.intercept_ / 2
    return converted


def export_sklearn(
    estimator: Any, spec: dict[str, Any], example_input: np.ndarray, out_dir: Path
) -> None:
    """Write ``estimator`` as a model directory in ``out_dir``; ExportError unless ONNX
    Runtime's probabilities match ``predict_proba`` within 1e-4 on ``example_input``."""
    classes = spec["classes"]
    fitted = [int(c) for c in getattr(estimator, "classes_", [])]
    if fitted != list(range(len(classes))):
        raise InvalidInput("every class must be in the train split for a scikit-learn model")
    example = np.ascontiguousarray(example_input, dtype=np.float32)
    graph = onnx_bytes(estimator, example.shape[1])
    check_parity(estimator, graph, example)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ONNX_FILE).write_bytes(graph)
    save_file({}, str(out_dir / WEIGHTS_FILE), metadata={"format": "onnx-only"})
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def check_parity(estimator: Any, graph: bytes, example: np.ndarray) -> float:
    """The largest difference between ONNX Runtime's and scikit-learn's probabilities on
    ``example`` (and its first row alone); ExportError over :data:`TOLERANCE`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (example, example[:1]):
        (got,) = session.run([PROBABILITIES], {"input": batch})
        want = estimator.predict_proba(batch)
        if got.shape != want.shape:
            raise ExportError(f"ONNX gives {got.shape} probabilities, scikit-learn {want.shape}")
        worst = max(worst, float(np.max(np.abs(got - want))))
    if worst > TOLERANCE:
        raise ExportError(f"ONNX Runtime output differs from scikit-learn by {worst:.3g}")
    return worst
