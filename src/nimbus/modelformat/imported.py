"""Models trained elsewhere: what ``nimbus models import`` accepts, and the ``spec.json`` it
writes for them (docs/import.md).

An imported model is one self-contained ONNX file. :func:`inspect_onnx` reads it with the
``onnx`` package only (no ONNX Runtime, nothing executed) and refuses, each with a message
naming the problem: bytes that are not an ONNX model, tensors kept in external data files,
operators of custom domains, a graph ``onnx.checker`` (full check) or strict shape inference
rejects, more than one input to serve, an input whose shape cannot be served (free dimensions
the options do not fix, a fixed batch other than 1), and an output that does not score the
classes given. :func:`smoke_run` then runs it once in ONNX Runtime on seeded inputs: finite
scores, one per class. Both run in the limited child of the registration check
(:mod:`nimbus.modelformat.verify_child`), never in the control plane: the file is hostile.

The spec keeps the model's own signature: ``input`` is the graph's input (its own name and
datatype, the batch dimension -1), and besides ``probabilities`` and ``label`` the served
outputs include the graph's own output under its own name. ``imported`` records what serving
needs (which output, whether it is already a softmax, the graph's fixed batch) and what was
checked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.modelformat.files import ONNX_FILE
from nimbus.modelformat.import_options import ImportOptions
from nimbus.modelformat.spec import LABEL, PROBABILITIES

if TYPE_CHECKING:
    import onnx

ARCHITECTURE = "onnx-import"
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
SUM_TOLERANCE = 1e-3
CHECKS = (
    "one self-contained file: no external data",
    "standard operator domains only (ai.onnx, ai.onnx.ml)",
    "onnx.checker.check_model(full_check=True)",
    "strict shape inference",
    "one input, every dimension but the batch fixed",
    "the output scores one value per class",
    "an ONNX Runtime run on seeded inputs answered finite scores",
)
# TensorProto element types a served input or output may have -> Open Inference Protocol names.
_ELEM_TYPES = {
    1: "FP32",
    2: "UINT8",
    6: "INT32",
    7: "INT64",
    8: "BYTES",  # strings: a text model's input
    10: "FP16",
    11: "FP64",
}
SAMPLE_TEXTS = ("a short text", "Another one, with PUNCTUATION!", "", "ünïcödé 123")
_SCORE_TYPES = ("FP32", "FP16", "FP64")


# -- the static checks (onnx only) ------------------------------------------------------


def inspect_onnx(data: bytes, options: ImportOptions) -> dict[str, Any]:
    """The ``spec.json`` of the ONNX model ``data`` imported with ``options``, after the
    static checks (module docstring); InvalidInput naming the first problem."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf raises DecodeError, and others on garbage
        raise InvalidInput(
            f"the file is not an ONNX model ({ONNX_FILE} cannot be parsed)"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidInput("the file is not an ONNX model: it has no graph")
    refuse_external_data(model)
    refuse_custom_domains(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise InvalidInput(f"onnx.checker refuses the model: {_short(exc)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise InvalidInput(f"shape inference fails on the model: {_short(exc)}") from None
    graph = inferred.graph
    served = served_inputs(graph)
    if len(served) != 1:
        names = [i.name[:80] for i in served]
        raise InvalidInput(
            f"the model takes {len(served)} inputs {names}: Nimbus serves models with exactly one"
        )
    signature = _input_signature(served[0], options)
    output = _scored_output(graph, len(options.classes))
    datatype, shape = _tensor_type(output)
    return {
        "format_version": 1,
        "task": options.task.value,
        "architecture": ARCHITECTURE,
        "arch_params": {},
        "classes": list(options.classes),
        "input": signature.tensor,
        "onnx_input": signature.tensor,
        "outputs": _outputs(output.name, datatype, shape, len(options.classes)),
        "preprocessing": signature.preprocessing,
        "imported": {
            "output": output.name,
            "output_shape": [-1, *[-1 if d is None else d for d in shape[1:]]],
            "scores": None,  # "probabilities" or "logits": the run decides (smoke_run)
            "batch": signature.batch,
            "ir_version": int(model.ir_version),
            "opsets": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
            "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
            "checks": list(CHECKS),
        },
    }


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__


def _tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor the graph holds: initializers (dense and sparse) and the tensors of
    node attributes, in subgraphs too."""
    for tensor in graph.initializer:
        yield tensor.name, tensor
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, sparse.values
        yield sparse.indices.name, sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield f"{node.name or node.op_type}.{attribute.name}", attribute.t
            for tensor in attribute.tensors:
                yield f"{node.name or node.op_type}.{attribute.name}", tensor
            for subgraph in _subgraphs(attribute):
                yield from _tensors(subgraph)


def _subgraphs(attribute: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in _subgraphs(attribute):
                yield from _nodes(subgraph)


def refuse_external_data(model: onnx.ModelProto) -> None:
    """An imported model is one file: any tensor kept in external data is refused."""
    import onnx

    for name, tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise InvalidInput(
                f"tensor {name[:80]!r} is stored in an external data file ({where[:80]!r}): "
                "an imported model must be one self-contained file (save it with "
                "onnx.save_model(model, path, save_as_external_data=False))"
            )


def refuse_custom_domains(model: onnx.ModelProto) -> None:
    """Only the standard operator sets: a custom domain names code Nimbus does not have."""
    if len(model.functions):
        raise InvalidInput(
            f"the model defines its own functions (domain {model.functions[0].domain[:80]!r}): "
            "only the standard operator domains (ai.onnx, ai.onnx.ml) are served"
        )
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise InvalidInput(
                f"the model uses the custom operator domain {opset.domain[:80]!r}: only the "
                "standard operator domains (ai.onnx, ai.onnx.ml) are served"
            )
    for node in _nodes(model.graph):
        if node.domain not in STANDARD_DOMAINS:
            raise InvalidInput(
                f"operator {node.op_type[:80]!r} is of the custom domain {node.domain[:80]!r}: "
                "only the standard operator domains (ai.onnx, ai.onnx.ml) are served"
            )


def served_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's inputs a client feeds: those that are not initializers (models of IR
    version 3 list every weight as an input too)."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def _tensor_type(value: onnx.ValueInfoProto) -> tuple[str, list[int | None]]:
    """The OIP datatype and the dimensions (None where not fixed) of a graph tensor."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InvalidInput(f"{value.name[:80]!r} is a {kind or 'untyped value'}, not a tensor")
    tensor = value.type.tensor_type
    datatype = _ELEM_TYPES.get(tensor.elem_type)
    if datatype is None:
        import onnx

        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise InvalidInput(f"{value.name[:80]!r} holds {name} values, which are not served")
    if not tensor.HasField("shape"):
        raise InvalidInput(f"{value.name[:80]!r} has no shape (not even its rank)")
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor.shape.dim
    ]
    return datatype, dims


@dataclass(frozen=True)
class _Signature:
    tensor: dict[str, Any]
    preprocessing: dict[str, Any]
    batch: int | None


def _input_signature(value: onnx.ValueInfoProto, options: ImportOptions) -> _Signature:
    datatype, dims = _tensor_type(value)
    name = value.name
    if not dims:
        raise InvalidInput(
            f"input {name[:80]!r} is a scalar: the first dimension must be the batch"
        )
    batch = dims[0]
    if batch not in (None, 1):
        raise InvalidInput(
            f"input {name[:80]!r} has a fixed batch of {batch}: Nimbus serves models whose "
            "first dimension is free or 1"
        )
    if options.task is Task.IMAGE:
        shape, preprocessing = _image_input(name, datatype, dims, options)
    elif options.task is Task.TABULAR:
        if len(dims) != 2 or dims[1] is None or datatype != "FP32":
            raise InvalidInput(
                f"input {name[:80]!r} is {datatype} {_shown(dims)}: a tabular model must take "
                "FP32 [batch, features] with the number of features fixed"
            )
        shape, preprocessing = [-1, dims[1]], {"kind": "tabular", "features": []}
    else:
        if datatype != "BYTES" or len(dims) not in (1, 2) or dims[1:] not in ([], [1]):
            raise InvalidInput(
                f"input {name[:80]!r} is {datatype} {_shown(dims)}: a text model must take "
                "strings, [batch] or [batch, 1], and tokenise them in the graph with standard "
                "operators (docs/import.md)",
                field="task",
            )
        shape, preprocessing = ([-1, 1] if len(dims) == 2 else [-1]), {"kind": "text"}
    tensor = {"name": name, "datatype": datatype, "shape": shape}
    return _Signature(tensor, preprocessing, batch)


def _shown(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _image_input(
    name: str, datatype: str, dims: list[int | None], options: ImportOptions
) -> tuple[list[int], dict[str, Any]]:
    if len(dims) != 4:
        raise InvalidInput(
            f"input {name[:80]!r} is {_shown(dims)}: an image model must take a rank-4 tensor "
            "(NCHW or NHWC)"
        )
    layout = options.layout or _guess_layout(dims)
    if layout is None:
        raise InvalidInput(
            f"input {name[:80]!r} is {_shown(dims)}: say its layout with --input-layout NCHW or "
            "NHWC",
            field="input_layout",
        )
    channels, height, width = (
        (dims[1], dims[2], dims[3])
        if layout == "NCHW"
        else (
            dims[3],
            dims[1],
            dims[2],
        )
    )
    if channels not in (1, 3):
        raise InvalidInput(
            f"input {name[:80]!r} is {_shown(dims)}: in {layout} that is "
            f"{'?' if channels is None else channels} channels, and images are served with 1 "
            "(grey) or 3 (RGB)",
            field="input_layout",
        )
    if options.size is not None:
        for side, fixed, asked in (
            ("height", height, options.size[0]),
            ("width", width, options.size[1]),
        ):
            if fixed is not None and fixed != asked:
                raise InvalidInput(
                    f"input {name[:80]!r} has a fixed {side} of {fixed}, but --size says {asked}",
                    field="size",
                )
        height, width = options.size
    if height is None or width is None:
        raise InvalidInput(
            f"input {name[:80]!r} is {_shown(dims)}: its height and width are free; fix them "
            "with --size HxW",
            field="size",
        )
    if datatype not in ("FP32", "UINT8"):
        raise InvalidInput(f"input {name[:80]!r} is {datatype}: image models take FP32 or UINT8")
    if datatype == "UINT8" and (options.scale, options.mean, options.std) != (None, None, None):
        raise InvalidInput(
            f"input {name[:80]!r} takes UINT8 pixels: --scale, --mean and --std do not apply"
        )
    for key, values in (("mean", options.mean), ("std", options.std)):
        if values is not None and len(values) not in (1, channels):
            raise InvalidInput(
                f"{key} has {len(values)} values but the image has {channels} channels",
                field=key,
            )
    shape = [-1, channels, height, width] if layout == "NCHW" else [-1, height, width, channels]
    preprocessing = {
        "kind": "image",
        "layout": layout,
        "height": height,
        "width": width,
        "channels": channels,
        "scale": 1.0 if options.scale is None else options.scale,
        "mean": list(options.mean or (0.0,)),
        "std": list(options.std or (1.0,)),
    }
    return shape, preprocessing


def _guess_layout(dims: list[int | None]) -> str | None:
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    return None


def _scored_output(graph: onnx.GraphProto, classes: int) -> onnx.ValueInfoProto:
    """The output that scores the classes: the only floating-point output, or the one
    named ``probabilities`` among several."""
    candidates = [
        o
        for o in graph.output
        if o.type.WhichOneof("value") == "tensor_type"
        and _ELEM_TYPES.get(o.type.tensor_type.elem_type) in _SCORE_TYPES
    ]
    if len(candidates) > 1:
        candidates = [o for o in candidates if o.name == PROBABILITIES] or candidates
    if len(candidates) != 1:
        names = [o.name[:80] for o in graph.output]
        raise InvalidInput(
            f"the model's outputs {names} hold {len(candidates)} floating-point tensors: Nimbus "
            "needs exactly one that scores the classes (or one named 'probabilities')"
        )
    output: onnx.ValueInfoProto = candidates[0]
    _, dims = _tensor_type(output)
    if not dims or dims[0] not in (None, 1):
        raise InvalidInput(
            f"output {output.name[:80]!r} is {_shown(dims)}: the first dimension must be the batch"
        )
    rest = dims[1:]
    if all(d is not None for d in rest):
        scores = int(np.prod([d for d in rest if d is not None], dtype=np.int64))
        if scores != classes:
            raise InvalidInput(
                f"output {output.name[:80]!r} is {_shown(dims)}: it scores {scores} classes, "
                f"but {classes} class names were given",
                field="classes",
            )
    return output


def _outputs(
    name: str, datatype: str, dims: list[int | None], classes: int
) -> list[dict[str, Any]]:
    outputs = [
        {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]},
        {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
    ]
    if name not in (PROBABILITIES, LABEL):
        shape = [-1, *[-1 if d is None else d for d in dims[1:]]]
        outputs.append({"name": name, "datatype": "FP32", "shape": shape})
    del datatype  # served as FP32 whatever the graph computes in
    return outputs


# -- the run (ONNX Runtime) ---------------------------------------------------------------


def sample_input(spec: Mapping[str, Any], rows: int) -> np.ndarray:
    """Seeded inputs of the spec's input signature, ``rows`` of them."""
    tensor = spec["input"]
    shape = [rows, *tensor["shape"][1:]]
    rng = np.random.default_rng(0)
    if tensor["datatype"] == "BYTES":
        texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(rows)]
        return np.array(texts, dtype=object).reshape(shape)
    if tensor["datatype"] == "UINT8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


def smoke_run(data: bytes, spec: dict[str, Any]) -> None:
    """Run the model in ONNX Runtime on seeded inputs (one row, and two when the batch is
    free): it must answer finite scores, one per class. Records whether they are
    probabilities already (``imported.scores``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"ONNX Runtime cannot load the model: {_short(exc)}") from None
    imported = spec["imported"]
    classes = len(spec["classes"])
    # Probabilities already when every row the graph answers is a distribution (a Softmax
    # at its end, or a classifier that outputs probabilities, such as ai.onnx.ml's
    # LinearClassifier); otherwise the server applies a softmax to its scores.
    probabilities = True
    for rows in (1,) if imported["batch"] == 1 else (1, 2):
        inputs = sample_input(spec, rows)
        try:
            (out,) = session.run([imported["output"]], {spec["input"]["name"]: inputs})
        except Exception as exc:
            raise InvalidInput(f"ONNX Runtime fails on sample inputs: {_short(exc)}") from None
        scores = np.asarray(out)
        if scores.ndim < 1 or scores.shape[0] != rows or scores.size != rows * classes:
            raise InvalidInput(
                f"output {imported['output'][:80]!r} is {list(scores.shape)} for {rows} input "
                f"row(s): expected {classes} scores per row, one per class",
                field="classes",
            )
        if not np.all(np.isfinite(scores)):
            raise InvalidInput(f"output {imported['output'][:80]!r} is not finite on sample inputs")
        if -1 in imported["output_shape"][1:]:  # free in the graph: served as it answered
            _fix_output_shape(spec, [-1, *scores.shape[1:]])
        flat = scores.reshape(rows, classes)
        sums = flat.sum(axis=1, dtype=np.float64)
        distributions = bool(
            flat.min() >= -SUM_TOLERANCE
            and flat.max() <= 1 + SUM_TOLERANCE
            and np.max(np.abs(sums - 1.0)) <= SUM_TOLERANCE
        )
        probabilities = probabilities and distributions
    imported["scores"] = "probabilities" if probabilities else "logits"


def _fix_output_shape(spec: dict[str, Any], shape: list[int]) -> None:
    """Record the shape the graph's output has per row, where the graph left it free."""
    imported = spec["imported"]
    imported["output_shape"] = shape
    for output in spec["outputs"]:
        if output["name"] == imported["output"]:
            output["shape"] = shape


def import_spec(data: bytes, options: ImportOptions) -> dict[str, Any]:
    """The checked spec of an imported model: :func:`inspect_onnx`, then :func:`smoke_run`."""
    spec = inspect_onnx(data, options)
    smoke_run(data, spec)
    return spec


def scores_to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """``[rows, classes]`` probabilities from a model's scores: as they are when the graph
    answers probabilities already (``kind``), else a softmax of them."""
    if kind == "probabilities":
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


def image_input(pixels: np.ndarray, preprocessing: Mapping[str, Any], datatype: str) -> np.ndarray:
    """One decoded image (UINT8 ``[H, W, C]``) as an imported model's one-row input: for an
    FP32 input ``(pixel * scale - mean) / std`` per channel, then the layout (NCHW moves the
    channels first); a UINT8 input takes the pixels as they are."""
    image = pixels
    if datatype != "UINT8":
        scale = float(preprocessing.get("scale", 1.0))
        mean = np.asarray(preprocessing.get("mean") or [0.0], dtype=np.float32)
        std = np.asarray(preprocessing.get("std") or [1.0], dtype=np.float32)
        image = (pixels.astype(np.float32) * np.float32(scale) - mean) / std
    if preprocessing.get("layout") == "NCHW":
        image = image.transpose(2, 0, 1)
    return np.ascontiguousarray(image[np.newaxis])
