"""The registration check of a model directory, in the control plane: no torch, nothing
unpickled; numpy, safetensors' header format and ONNX Runtime only.

The job's runtime already compared ONNX with PyTorch (within 1e-4) when it exported the
model; registration makes sure the files it stored are whole and fit together:

1. ``spec.json`` parses and is a valid spec (docs/model-format.md);
2. ``weights.safetensors`` has a well-formed header whose tensors exactly tile the file;
3. ONNX Runtime loads ``model.onnx``; its single input has the name, element type and rank
   of ``spec.onnx_input`` (and the same size on every dimension both fix), and it has a
   ``probabilities`` FP32 output of rank 2 whose class dimension, if fixed, is the number of
   classes;
4. on seeded random inputs built from the spec (batches of 4 and 1) it answers
   ``[rows, classes]`` probabilities, finite, in [0, 1], each row summing to 1;
5. optionally, given the test split of the job's dataset and the accuracy the job recorded
   there, ``model.onnx`` scores the same accuracy (up to a few near-tie flips).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.modelformat.dtypes import DTYPES, ORT_TYPES
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from nimbus.modelformat.spec import PROBABILITIES, ModelSpec
from nimbus.modelformat.text import TextEncoder

if TYPE_CHECKING:
    import onnxruntime as ort

SUM_TOLERANCE = 1e-3
EVAL_BATCH = 256
MAX_HEADER = 100 * 1024 * 1024
_SAFETENSORS_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def check_model_dir(
    model_dir: Path,
    *,
    test_split: tuple[np.ndarray, np.ndarray] | None = None,
    recorded_accuracy: float | None = None,
) -> dict[str, Any]:
    """Run the checks above on ``model_dir``; InvalidInput (naming the file and what is
    wrong) on the first failure. Returns the parsed spec."""
    with open(model_dir / WEIGHTS_FILE, "rb") as weights:
        return check_model(
            (model_dir / SPEC_FILE).read_bytes(),
            weights,
            model_dir / ONNX_FILE,
            test_split=test_split,
            recorded_accuracy=recorded_accuracy,
        )


def check_model(
    spec_json: bytes,
    weights: BinaryIO,
    onnx: Path | bytes,
    *,
    test_split: tuple[np.ndarray, np.ndarray] | None = None,
    recorded_accuracy: float | None = None,
) -> dict[str, Any]:
    """:func:`check_model_dir` on the files' contents: ``spec.json``'s bytes, the open
    ``weights.safetensors``, ``model.onnx`` as a path or bytes (the limited child that runs
    this in the control plane's stead gets open files, not paths: see
    :mod:`nimbus.modelformat.verify_child`)."""
    raw, spec = parse_spec(spec_json)
    check_safetensors(weights)
    session = open_onnx(onnx, spec)
    for rows in (4, 1):
        run_probabilities(session, spec, sample_inputs(session, spec, rows))
    if test_split is not None and recorded_accuracy is not None:
        check_accuracy(session, spec, test_split, recorded_accuracy)
    return raw


def load_spec(path: Path) -> tuple[dict[str, Any], ModelSpec]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{SPEC_FILE} cannot be read as JSON: {exc}") from None
    return parse_spec(data)


def parse_spec(data: bytes) -> tuple[dict[str, Any], ModelSpec]:
    """The spec in ``spec.json``'s bytes, raw and parsed; its probabilities fit its classes."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise InvalidInput(f"{SPEC_FILE} cannot be read as JSON: {exc}") from None
    spec = ModelSpec.from_dict(raw)
    probabilities = spec.output(PROBABILITIES)
    if len(probabilities.shape) != 2 or probabilities.shape[1] not in (-1, len(spec.classes)):
        raise InvalidInput(
            f"{SPEC_FILE}: output '{PROBABILITIES}' must be [-1, {len(spec.classes)}] "
            f"(one score for each of its {len(spec.classes)} classes)"
        )
    return raw, spec


def check_safetensors(source: Path | BinaryIO) -> None:
    """The header parses and its tensors' byte ranges tile the data exactly."""
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        prefix = f.read(8)
        if len(prefix) != 8:
            raise InvalidInput(f"{WEIGHTS_FILE} is truncated")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER, size - 8):
            raise InvalidInput(f"{WEIGHTS_FILE} has an impossible header length")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise InvalidInput(f"{WEIGHTS_FILE} has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{WEIGHTS_FILE} has a header that is not a JSON object")
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            itemsize = _SAFETENSORS_SIZES[entry["dtype"]]
            start, end = (int(v) for v in entry["data_offsets"])
            count = int(np.prod([int(d) for d in entry["shape"]], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(
                f"{WEIGHTS_FILE}: tensor {name[:80]!r} is described wrongly"
            ) from None
        if end - start != count * itemsize:
            raise InvalidInput(f"{WEIGHTS_FILE}: tensor {name[:80]!r} has the wrong byte size")
        ranges.append((start, end))
    position = 0
    for start, end in sorted(ranges):
        if start != position:
            raise InvalidInput(f"{WEIGHTS_FILE}: tensor data overlaps or leaves gaps")
        position = end
    if position != size - 8 - length:
        raise InvalidInput(f"{WEIGHTS_FILE}: the tensors do not cover the file exactly")


def open_onnx(path: Path | bytes, spec: ModelSpec) -> ort.InferenceSession:
    """Load the graph (a path, or the file's bytes) and compare its signature with the
    spec's."""
    # Imported here: the control plane imports this module (recorded_accuracy) but runs
    # the check in a child (nimbus.modelformat.verify_child), so it need not load ONNX
    # Runtime itself.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            options,
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"{ONNX_FILE} cannot be loaded by ONNX Runtime: {exc}") from None
    inputs = session.get_inputs()
    want = spec.onnx_input
    if len(inputs) != 1:
        raise InvalidInput(f"{ONNX_FILE} takes {len(inputs)} inputs, the spec one")
    got = inputs[0]
    datatype = ORT_TYPES.get(got.type, got.type)
    if got.name != want.name or datatype != want.datatype:
        raise InvalidInput(
            f"{ONNX_FILE} takes {got.name!r} {datatype}, but {SPEC_FILE} says onnx_input is "
            f"{want.name!r} {want.datatype}"
        )
    if len(got.shape) != len(want.shape) or any(
        isinstance(g, int) and w != -1 and g != w
        for g, w in zip(got.shape, want.shape, strict=True)
    ):
        raise InvalidInput(f"{ONNX_FILE} input shape {got.shape} does not fit {list(want.shape)}")
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get(PROBABILITIES)
    if out is None or out.type != "tensor(float)" or len(out.shape) != 2:
        raise InvalidInput(f"{ONNX_FILE} has no FP32 rank-2 '{PROBABILITIES}' output")
    if isinstance(out.shape[1], int) and out.shape[1] != len(spec.classes):
        raise InvalidInput(
            f"{ONNX_FILE} scores {out.shape[1]} classes, {SPEC_FILE} names {len(spec.classes)}"
        )
    return session


def sample_inputs(session: ort.InferenceSession, spec: ModelSpec, rows: int) -> np.ndarray:
    """Seeded random inputs of ``spec.onnx_input``'s type and shape (free dimensions from the
    graph, else the preprocessing, else 1)."""
    want = spec.onnx_input
    graph_shape = session.get_inputs()[0].shape
    dims = [rows]
    for graph_dim, spec_dim in zip(graph_shape[1:], want.shape[1:], strict=True):
        if spec_dim != -1:
            dims.append(spec_dim)
        elif isinstance(graph_dim, int):
            dims.append(graph_dim)
        else:
            dims.append(int(spec.preprocessing.get("max_len", 1)))
    rng = np.random.default_rng(0)
    dtype = DTYPES[want.datatype]
    if want.datatype == "UINT8":
        return rng.integers(0, 256, dims, dtype=np.uint8)
    if dtype.kind in "iu":
        vocab = len(spec.preprocessing.get("vocab") or ()) or int(
            spec.arch_params.get("vocab_size", 2)
        )
        return rng.integers(0, max(vocab, 1), dims).astype(dtype)
    return rng.standard_normal(dims).astype(dtype)


def run_probabilities(
    session: ort.InferenceSession, spec: ModelSpec, inputs: np.ndarray
) -> np.ndarray:
    """Run the graph; the answer must be one probability row per input row."""
    try:
        (out,) = session.run([PROBABILITIES], {spec.onnx_input.name: inputs})
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"{ONNX_FILE} fails on sample inputs: {exc}") from None
    probabilities = np.asarray(out)
    expected = (len(inputs), len(spec.classes))
    if probabilities.shape != expected:
        raise InvalidInput(
            f"{ONNX_FILE} answers shape {list(probabilities.shape)}, expected {list(expected)}"
        )
    if not np.all(np.isfinite(probabilities)):
        raise InvalidInput(f"{ONNX_FILE} answers non-finite probabilities")
    sums = probabilities.sum(axis=1, dtype=np.float64)
    if (
        probabilities.min() < -SUM_TOLERANCE
        or probabilities.max() > 1 + SUM_TOLERANCE
        or np.max(np.abs(sums - 1.0)) > SUM_TOLERANCE
    ):
        raise InvalidInput(f"{ONNX_FILE} answers rows that are not probabilities (softmax)")
    return probabilities


def check_accuracy(
    session: ort.InferenceSession,
    spec: ModelSpec,
    test_split: tuple[np.ndarray, np.ndarray],
    recorded: float,
) -> float:
    """``model.onnx``'s accuracy on the test split must be the one the job recorded: the
    export agrees with PyTorch within 1e-4, so only near-ties may flip (a few rows)."""
    x, y = test_split
    if len(x) != len(y) or not len(y):
        return recorded
    encoder = (
        TextEncoder.from_preprocessing(dict(spec.preprocessing)) if spec.task is Task.TEXT else None
    )
    dtype = DTYPES[spec.onnx_input.datatype]
    correct = 0
    for start in range(0, len(y), EVAL_BATCH):
        rows = np.asarray(x[start : start + EVAL_BATCH])
        batch = (
            encoder.encode([str(r) for r in rows])
            if encoder is not None
            else np.ascontiguousarray(rows, dtype=dtype)
        )
        predicted = run_probabilities(session, spec, batch).argmax(axis=1)
        correct += int(np.sum(predicted == np.asarray(y[start : start + EVAL_BATCH])))
    accuracy = correct / len(y)
    allowed = max(2, int(0.002 * len(y)))
    if abs(accuracy - recorded) * len(y) > allowed + 1e-9:
        raise InvalidInput(
            f"{ONNX_FILE} scores accuracy {accuracy:.4f} on the dataset's {len(y)} test "
            f"examples, but the job recorded {recorded:.4f}: the files do not belong together"
        )
    return accuracy


def recorded_accuracy(evaluation: Mapping[str, Any] | None, test_rows: int) -> float | None:
    """The accuracy a job recorded on the whole test split (None if it did not)."""
    if not evaluation:
        return None
    accuracy, support = evaluation.get("accuracy"), evaluation.get("support")
    if not isinstance(accuracy, int | float) or support != test_rows:
        return None
    return float(accuracy)
