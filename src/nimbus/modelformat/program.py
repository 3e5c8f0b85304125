"""A script's torch module as a graph the server can run without the user's code.

``torch.export.load`` is not used: a ``.pt2`` archive may declare its weights and constants
pickled (``use_pickle``), which it reads with ``torch.load(weights_only=False)`` and
``pickle.loads``; it evaluates symbolic shapes with ``sympy.sympify`` (``eval``); it
resolves any ``torch.*`` attribute path as an operator (``torch.os.system`` included); and
``torch.fx`` turns node names into generated Python source. A hostile user's file must do
none of that.

So the job (inside its sandbox) exports the module with ``torch.export.export`` and writes
the graph it got as plain JSON (``program.json``) and every tensor it reads as safetensors
(``program.safetensors``). The server reads only those two: operators are looked up by name
in a fixed list of ATen operators (plus ``operator.getitem`` and the size operators that a
dynamic batch needs), arguments are numbers, booleans, strings, lists, dtypes and references
to earlier nodes, and the graph is run by a small interpreter (:class:`Program`), not by
generated code. Anything else is refused with a ProgramError naming it.

A text model's program takes the int64 token ids (``input_dtype``) and must hold exactly
one ``aten.embedding`` of them; the replica runs that node through :attr:`Program.embedding`
(a module), so Integrated Gradients can start from its output, the token embeddings, as it
does on a built-in's ``nn.Embedding`` (``LayerIntegratedGradients``): the rest of the graph
runs unchanged.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nimbus.modelformat.files import PROGRAM_FILE, PROGRAM_WEIGHTS_FILE

FORMAT = 1
MAX_NODES = 20_000
MAX_PROGRAM_BYTES = 16 * 1024 * 1024

# ATen operators a classifier's forward pass is made of: none reads files, sockets or
# memory it was not given. Any overload of a listed packet is accepted.
ATEN_OPS = frozenset(
    """
    abs adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool2d add addmm alias amax
    amin arange avg_pool1d avg_pool2d batch_norm bmm cat chunk clamp clamp_min clamp_max
    clone contiguous conv1d conv2d conv3d convolution cos detach div dropout elu embedding
    eq erf exp expand flatten floor_divide gelu group_norm gt hardsigmoid hardswish
    hardtanh index_select instance_norm layer_norm leaky_relu linear log log_softmax
    logsumexp lt masked_fill matmul max max_pool1d max_pool2d max_pool2d_with_indices mean
    minimum maximum mm mul native_batch_norm native_layer_norm ne neg permute pow relu
    relu6 reshape rsqrt scaled_dot_product_attention select sigmoid silu sin slice softmax
    split sqrt squeeze stack sub sum t tanh transpose unbind unflatten unsqueeze view where
    _native_batch_norm_legit_no_training _log_softmax _softmax _to_copy to sym_size sym_numel
    numel size zeros_like ones_like full_like mish softplus prelu upsample_nearest2d
    upsample_bilinear2d pad constant_pad_nd flip roll var std _assert_tensor_metadata
    """.split()  # noqa: SIM905 (a list of ~120 names reads better as words)
)
_OPERATORS: dict[str, Callable[..., Any]] = {
    "operator.getitem": operator.getitem,
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.floordiv": operator.floordiv,
}
_ATEN_NAME = re.compile(r"aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        *(torch.float32, torch.float64, torch.float16, torch.bfloat16),
        *(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool),
    )
}


class ProgramError(ValueError):
    """The module cannot be written as a program, or a program file is refused."""


# -- writing (inside the job) ------------------------------------------------------------


def write_program(module: nn.Module, example: torch.Tensor, out_dir: Path) -> None:
    """Export ``module`` (eval mode, logits out) with a dynamic batch and write
    program.json + program.safetensors in ``out_dir``; ProgramError says why it cannot.
    An integer ``example`` (token ids) is kept as it is: the program takes that dtype."""
    batch = torch.export.Dim("batch", min=1)
    try:
        exported = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # data-dependent control flow, unsupported Python, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProgramError(f"torch.export could not trace the model: {first[:300]}") from exc
    signature = exported.graph_signature
    tensors: dict[str, torch.Tensor] = {}
    inputs: list[str] = []
    for spec in signature.input_specs:
        name = spec.arg.name
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            inputs.append(name)
            continue
        if spec.target is None:
            raise ProgramError(f"input {name} has no tensor behind it")
        value = (
            exported.state_dict[spec.target]
            if spec.target in exported.state_dict
            else exported.constants[spec.target]
        )
        if not isinstance(value, torch.Tensor):
            raise ProgramError(f"{spec.target} is a {type(value).__name__}, not a tensor")
        tensors[name] = value.detach().contiguous().clone()
    if len(inputs) != 1:
        raise ProgramError(f"the model must take one tensor, it takes {len(inputs)} inputs")
    for out in signature.output_specs:
        if out.kind != torch.export.graph_signature.OutputKind.USER_OUTPUT:
            raise ProgramError(f"the model's forward pass mutates state ({out.kind.name})")
    nodes: list[dict[str, Any]] = []
    output: Any = None
    for node in exported.graph.nodes:
        if node.op == "call_function":
            nodes.append(
                {
                    "name": node.name,
                    "op": _target_name(node.target),
                    "args": _encode(node.args),
                    "kwargs": {k: _encode(v) for k, v in node.kwargs.items()},
                }
            )
        elif node.op == "output":
            output = _encode(node.args[0])
        elif node.op != "placeholder":
            raise ProgramError(f"graph node {node.name} is a {node.op}: not supported")
    program: dict[str, Any] = {
        "format": FORMAT,
        "input": inputs[0],
        "tensors": sorted(tensors),
        "nodes": nodes,
        "output": output,
    }
    if not example.is_floating_point():
        program["input_dtype"] = str(example.dtype).removeprefix("torch.")
    save_file(tensors, str(out_dir / PROGRAM_WEIGHTS_FILE))
    (out_dir / PROGRAM_FILE).write_text(json.dumps(program), encoding="utf-8")


def write_checked_program(
    module: nn.Module, example: np.ndarray, out_dir: Path, *, token_ids: bool = False
) -> None:
    """:func:`write_program` for a model taking ``example`` (as the dataset holds it), fed
    float32 as explanations feed it, or with ``token_ids`` (a text model) the int64 ids,
    whose one embedding the program must hold (:attr:`Program.embedding`); the program read
    back must give the module's outputs on ``example`` within 1e-4, or it is removed and
    ProgramError says why."""
    raw = torch.from_numpy(example)
    fed = raw.to(torch.int64) if token_ids else raw.to(torch.float32)
    with torch.no_grad():
        expected = module(raw).float()
        write_program(module, fed, out_dir)
        try:
            program = Program.load(out_dir)  # a text program: its one embedding found
            got = program(fed).float()
            error = float((got - expected).abs().max()) if got.shape == expected.shape else None
        except ProgramError as exc:
            error, reason = None, str(exc)[:300]
        except (RuntimeError, TypeError, ValueError) as exc:
            error, reason = None, f"the program read back fails: {str(exc)[:300]}"
        else:
            reason = f"the program read back differs from the model by {error}"
    if error is None or not error <= 1e-4:
        (out_dir / PROGRAM_FILE).unlink(missing_ok=True)
        (out_dir / PROGRAM_WEIGHTS_FILE).unlink(missing_ok=True)
        raise ProgramError(reason)


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = f"{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
        if target.namespace == "aten" and target._schema.name.split("::")[-1] in ATEN_OPS:
            return name
        raise ProgramError(f"operator {name} is not one Nimbus runs for explanations")
    for name, known in _OPERATORS.items():
        if target is known:
            return name
    raise ProgramError(f"operator {getattr(target, '__name__', target)!r} is not supported")


def _encode(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}
    if isinstance(value, torch.memory_format):
        return {"memory_format": "contiguous" if value == torch.contiguous_format else "keep"}
    if isinstance(value, torch.layout):
        return {"layout": "strided"}
    raise ProgramError(f"cannot write an argument of type {type(value).__name__}")


# -- reading (in the replica) ------------------------------------------------------------


class EmbeddingNode(nn.Module):
    """The program's one ``aten.embedding`` of its token ids, as a module: what
    ``LayerIntegratedGradients`` hooks to take the embeddings as the integrated input."""

    def __init__(self, op: Callable[..., Any]) -> None:
        super().__init__()
        self._op = op

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = self._op(*args, **kwargs)
        return out


class Program(nn.Module):
    """The graph of program.json, run node by node (logits out, as the user's module)."""

    def __init__(self, program: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._input = str(program["input"])
        self._nodes: list[tuple[str, Callable[..., Any], Any, dict[str, Any]]] = []
        self._output = program["output"]
        self._tensors = tensors
        self._dtype = torch.float32
        # A token-ids program's embedding of them (None for float inputs).
        self.embedding: EmbeddingNode | None = None
        self._embedding_node = ""

    @classmethod
    def load(cls, model_dir: Path) -> Program:
        """Read program.json and program.safetensors in ``model_dir``; ProgramError names
        whatever it refuses. Nothing is unpickled, evaluated or imported."""
        path = model_dir / PROGRAM_FILE
        try:
            if path.stat().st_size > MAX_PROGRAM_BYTES:
                raise ProgramError(f"{PROGRAM_FILE} is over {MAX_PROGRAM_BYTES} bytes")
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ProgramError(f"cannot read {PROGRAM_FILE}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ProgramError(f"{PROGRAM_FILE} is not a format-{FORMAT} program")
        try:
            tensors = load_file(str(model_dir / PROGRAM_WEIGHTS_FILE))
        except (OSError, SafetensorError, ValueError) as exc:
            raise ProgramError(f"cannot read {PROGRAM_WEIGHTS_FILE}: {exc}") from exc
        names = raw.get("tensors")
        if not isinstance(names, list) or sorted(tensors) != sorted(names):
            raise ProgramError(f"{PROGRAM_WEIGHTS_FILE} does not hold the program's tensors")
        program = cls(raw, tensors)
        dtype = raw.get("input_dtype", "float32")
        if dtype not in ("float32", "int64"):
            raise ProgramError("the program's input_dtype must be float32 or int64")
        program._dtype = _DTYPES[dtype]
        nodes = raw.get("nodes")
        if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
            raise ProgramError(f"the program must list at most {MAX_NODES} nodes")
        known = {program._input, *tensors}
        if not isinstance(raw.get("input"), str):
            raise ProgramError("the program's input must be a name")
        for node in nodes:
            if not isinstance(node, dict) or not isinstance(node.get("name"), str):
                raise ProgramError("each node must be an object with a name")
            if not isinstance(node.get("kwargs", {}), dict):
                raise ProgramError(f"node {node['name'][:80]!r}: kwargs must be an object")
            if node["name"] in known:
                raise ProgramError(f"node name {node['name'][:80]!r} is used twice")
            target = _resolve(node.get("op"))
            args = _check(node.get("args", []), known)
            kwargs = {str(k): _check(v, known) for k, v in node.get("kwargs", {}).items()}
            program._nodes.append((node["name"], target, args, kwargs))
            known.add(node["name"])
        _check(raw.get("output"), known)
        if program._dtype == torch.int64:
            program._find_embedding()
        return program.eval()

    def _find_embedding(self) -> None:
        """The one ``aten.embedding`` whose indices are computed from the token ids (not
        from their sizes only: a position embedding of ``arange(L)`` is not one)."""
        from_ids = {self._input}
        found: list[str] = []
        for name, target, args, kwargs in self._nodes:
            if getattr(target, "_overloadpacket", None) in _SIZE_OPS:
                continue
            if _refers(args, from_ids) or _refers(list(kwargs.values()), from_ids):
                from_ids.add(name)
                if getattr(target, "_overloadpacket", None) is torch.ops.aten.embedding and (
                    len(args) > 1 and _refers(args[1], from_ids)
                ):
                    found.append(name)
        if len(found) != 1:
            raise ProgramError(
                "a text model's program must embed its token ids once (one aten.embedding "
                f"of them) for integrated gradients; it has {len(found)}"
            )
        self._embedding_node = found[0]
        ops = {name: target for name, target, _, _ in self._nodes}
        self.embedding = EmbeddingNode(ops[found[0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Traced on float32 (what Integrated Gradients feeds); raw uint8 images become that.
        # A text model's on int64 token ids (occlusion's float ids are whole numbers).
        x = x if x.dtype == self._dtype else x.to(self._dtype)
        env: dict[str, Any] = {**self._tensors, self._input: x}
        for name, target, args, kwargs in self._nodes:
            if name == self._embedding_node and self.embedding is not None:
                target = self.embedding
            env[name] = target(*_bind(args, env), **{k: _bind(v, env) for k, v in kwargs.items()})
        out = _bind(self._output, env)
        while isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ProgramError("the program must return one tensor")
        return out


_SIZE_OPS = (
    torch.ops.aten.sym_size,
    torch.ops.aten.sym_numel,
    torch.ops.aten.size,
    torch.ops.aten.numel,
)


def _refers(value: Any, names: set[str]) -> bool:
    """Whether a stored argument refers to a node in ``names``."""
    if isinstance(value, list):
        return any(_refers(v, names) for v in value)
    return isinstance(value, dict) and value.get("node") in names


def _resolve(name: Any) -> Callable[..., Any]:
    if not isinstance(name, str):
        raise ProgramError("each node must name its operator")
    if name in _OPERATORS:
        return _OPERATORS[name]
    match = _ATEN_NAME.fullmatch(name)
    if match is None or match.group(1) not in ATEN_OPS:
        raise ProgramError(f"operator {name[:120]!r} is not one Nimbus runs")
    packet = getattr(torch.ops.aten, match.group(1), None)
    overload = getattr(packet, match.group(2), None) if packet is not None else None
    if not isinstance(overload, torch._ops.OpOverload) or overload.namespace != "aten":
        raise ProgramError(f"operator {name[:120]!r} does not exist in this PyTorch")
    return overload


def _check(value: Any, known: set[str]) -> Any:
    """The argument as stored, once every part is one the interpreter understands."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_check(v, known) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "node" and isinstance(inner, str) and inner in known:
            return value
        if key == "dtype" and inner in _DTYPES:
            return value
        if (key, inner) in {("device", "cpu"), ("layout", "strided")}:
            return value
        if key == "memory_format" and inner in ("contiguous", "keep"):
            return value
    raise ProgramError(f"argument {str(value)[:120]} is not one the program format has")


def _bind(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_bind(v, env) for v in value]
    if isinstance(value, dict):
        ((key, inner),) = value.items()
        if key == "node":
            return env[inner]
        if key == "dtype":
            return _DTYPES[inner]
        if key == "device":
            return torch.device("cpu")
        if key == "layout":
            return torch.strided
        return torch.contiguous_format if inner == "contiguous" else torch.preserve_format
    return value
