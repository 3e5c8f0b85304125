"""ONNX Runtime backend: ``model.onnx`` on the CPU with a deliberate thread budget.

One intra-op thread per replica by default: on small machines the event loop, the HTTP
parser and the model share the cores, and batching, not intra-op parallelism, is what buys
throughput. Inter-op parallelism is off (sequential execution), and so is spinning, which would
burn a core the event loop needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from nimbus.errors import InvalidInput
from nimbus.modelformat.dtypes import ORT_TYPES
from nimbus.modelformat.files import ONNX_FILE
from nimbus.modelformat.spec import PROBABILITIES, ModelSpec


class OnnxBackend:
    """Runs an ONNX Runtime session; ``run`` may be called from several threads."""

    platform = "onnxruntime_onnx"

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str) -> None:
        self._session = session
        self._input_name = input_name
        self._outputs = [output_name]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        (probabilities,) = self._session.run(self._outputs, {self._input_name: inputs})
        return np.asarray(probabilities)


class ImportedOnnxBackend:
    """An imported model (docs/import.md): its own scored output, as ``[rows, classes]``
    scores (a softmax or not: the predictor knows), run row by row when the graph's batch
    is fixed at 1."""

    platform = "onnxruntime_onnx"

    def __init__(
        self, session: ort.InferenceSession, input_name: str, output_name: str, batch: int | None
    ) -> None:
        self._session = session
        self._input_name = input_name
        self._outputs = [output_name]
        self._batch = batch

    def run(self, inputs: np.ndarray) -> np.ndarray:
        if self._batch == 1 and len(inputs) != 1:
            parts = [self._one(inputs[i : i + 1]) for i in range(len(inputs))]
            scores = np.concatenate(parts) if parts else self._one(inputs[:0])
        else:
            scores = self._one(inputs)
        return np.asarray(scores, dtype=np.float32).reshape(len(inputs), -1)

    def _one(self, inputs: np.ndarray) -> np.ndarray:
        (scores,) = self._session.run(self._outputs, {self._input_name: inputs})
        return np.asarray(scores).reshape(len(inputs), -1)


def session_options(threads: int) -> ort.SessionOptions:
    """CPU session options: ``threads`` intra-op threads, sequential, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def load(model_dir: Path, spec: ModelSpec, threads: int) -> OnnxBackend | ImportedOnnxBackend:
    """Open ``MODEL_DIR/model.onnx`` and check it against the spec's ``onnx_input``."""
    path = model_dir / ONNX_FILE
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"{path} cannot be loaded: {exc}") from None
    (model_input,) = session.get_inputs()
    expected = spec.onnx_input
    datatype = ORT_TYPES.get(model_input.type)
    if model_input.name != expected.name or datatype != expected.datatype:
        raise InvalidInput(
            f"model.onnx takes {model_input.name!r} {datatype or model_input.type}, but spec.json "
            f"says onnx_input is {expected.name!r} {expected.datatype}"
        )
    names = [o.name for o in session.get_outputs()]
    imported = spec.imported
    if imported is not None:
        output = str(imported.get("output"))
        if output not in names:
            raise InvalidInput(f"model.onnx has no output {output[:80]!r} (it has {names})")
        batch = imported.get("batch")
        return ImportedOnnxBackend(
            session, model_input.name, output, batch if isinstance(batch, int) else None
        )
    if PROBABILITIES not in names:
        raise InvalidInput(f"model.onnx has no '{PROBABILITIES}' output (it has {names})")
    return OnnxBackend(session, model_input.name, PROBABILITIES)
