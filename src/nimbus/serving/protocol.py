"""Open Inference Protocol v2 (KServe v2 / Triton REST) codec: pure bytes in, bytes out.

Supports JSON tensors (nested or flat, row-major) and the binary tensor data extension: the
body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors
of every input whose ``parameters.binary_data_size`` is set, in input order. Outputs come back
binary when asked (``parameters.binary_data_output`` or per-output ``parameters.binary_data``).
Every failure is a :class:`ProtocolError` (400) whose message names the offending field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from nimbus.errors import PayloadTooLarge
from nimbus.modelformat.dtypes import DTYPES, TensorSpec
from nimbus.names import whole_number
from nimbus.serving.errors import ProtocolError
from nimbus.serving.tensors import (
    decode_binary,
    decode_json,
    element_count,
    encode_binary,
    encode_json,
)

HEADER_LENGTH = "inference-header-content-length"
DEFAULT_MAX_BATCH_ROWS = 1024
DEFAULT_MAX_TENSOR_ELEMENTS = 16 * 1024 * 1024
EXTENSIONS = ("binary_tensor_data",)
_UNSUPPORTED_OUTPUT_PARAMS = ("classification", "shared_memory_region")


@dataclass(frozen=True)
class RequestLimits:
    """Caps on one request, checked from the declared shapes before any tensor is decoded.

    ``max_batch_rows`` bounds the batch dimension (what the model runs over and what a text
    model tokenises); ``max_tensor_elements`` bounds the elements of each input tensor.
    """

    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1 or self.max_tensor_elements < 1:
            raise ValueError("max_batch_rows and max_tensor_elements must be >= 1")

    def check(self, name: str, shape: Sequence[int], count: int) -> None:
        """Refuse (413, naming the cap) a tensor of ``shape`` holding ``count`` elements."""
        if shape and shape[0] > self.max_batch_rows:
            raise PayloadTooLarge(
                f"input '{name}' has {shape[0]} rows, above the limit of "
                f"{self.max_batch_rows} rows per request (max_batch_rows)"
            )
        if count > self.max_tensor_elements:
            raise PayloadTooLarge(
                f"input '{name}' has {count} elements, above the limit of "
                f"{self.max_tensor_elements} elements per tensor (max_tensor_elements)"
            )


DEFAULT_LIMITS = RequestLimits()


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    spec: TensorSpec
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded, validated inference request: arrays shaped as the client declared."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the request's own


def parse_header_length(value: str | bytes | None, body_length: int) -> int | None:
    """Validate the ``Inference-Header-Content-Length`` header against the body length."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    length = whole_number(text)  # int() alone would take ' 5', '+5' and '1_0'
    if length is None:
        raise ProtocolError(
            f"Inference-Header-Content-Length must be an integer, not {text[:40]!r}"
        )
    if not 0 < length <= body_length:
        raise ProtocolError(
            f"Inference-Header-Content-Length is {length} but the body has {body_length} bytes"
        )
    return length


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    limits: RequestLimits = DEFAULT_LIMITS,
) -> InferRequest:
    """Decode an infer request body and check it against the model's inputs and outputs.

    Shapes are checked against ``limits`` before their data is decoded. A server parsing many
    requests for one model keeps an :class:`InferCodec` instead.
    """
    return InferCodec(inputs, outputs, limits).parse(body, header_length)


class InferCodec:
    """:func:`parse_infer_request` for one model: what depends only on the model's signature
    and limits is worked out once, not for every request."""

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.limits = limits
        self._by_name = {spec.name: spec for spec in self.inputs}
        self._default_outputs = {
            binary: tuple(RequestedOutput(spec, binary) for spec in self.outputs)
            for binary in (False, True)
        }

    def parse(self, body: bytes, header_length: int | None) -> InferRequest:
        """Decode and check one request body (see :func:`parse_infer_request`)."""
        view = memoryview(body)
        head = view if header_length is None else view[:header_length]
        _check_json_values(body if header_length is None else head, len(self.inputs), self.limits)
        request = _load_json(head)
        if type(request) is not dict:
            raise ProtocolError("request body must be a JSON object")
        request_id = request.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ProtocolError("'id' must be a string")
        params = _params(request, "request")
        raw_inputs = request.get("inputs")
        if type(raw_inputs) is not list or not raw_inputs:
            raise ProtocolError("'inputs' must be a non-empty array")

        by_name = self._by_name
        limits = self.limits
        binary = view[header_length:] if header_length is not None else None
        maybe_bools: bool | None = None  # does the JSON hold true or false anywhere?
        offset = 0
        decoded: dict[str, np.ndarray] = {}
        for raw in raw_inputs:
            name, datatype, shape = _tensor_header(raw, by_name, decoded)
            spec = by_name[name]
            if datatype != spec.datatype:
                raise ProtocolError(
                    f"input '{name}' has datatype {datatype} but the model expects {spec.datatype}"
                )
            _check_shape(name, shape, spec.shape)
            count = element_count(shape)
            limits.check(name, shape, count)
            size = None
            if "parameters" in raw:
                size = _params(raw, f"input '{name}'").get("binary_data_size")
            if size is not None:
                if "data" in raw:
                    raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size")
                if binary is None:
                    raise ProtocolError(
                        f"input '{name}' has binary_data_size but the request has no "
                        "Inference-Header-Content-Length header"
                    )
                if not _is_int(size) or size < 0 or offset + size > len(binary):
                    raise ProtocolError(
                        f"input '{name}': binary_data_size {size!r} does not fit the "
                        f"{len(binary) - offset} binary bytes left in the body"
                    )
                flat = decode_binary(binary[offset : offset + size], datatype, name, count)
                offset += size
            elif "data" in raw:
                data = raw["data"]
                if type(data) is list and len(data) > count:
                    # Refused before numpy copies it: the parsed list is all it may cost.
                    raise ProtocolError(
                        f"input '{name}': shape holds {count} elements but data has "
                        f"{len(data)} entries"
                    )
                if maybe_bools is None:
                    raw_head = body if header_length is None else bytes(head)
                    maybe_bools = b"true" in raw_head or b"false" in raw_head
                flat = decode_json(data, datatype, name, count, maybe_bools=maybe_bools)
            else:
                raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
            decoded[name] = flat.reshape(shape)
        if binary is not None and offset != len(binary):
            raise ProtocolError(
                f"the body has {len(binary) - offset} binary bytes that no input claims"
            )
        if len(decoded) != len(by_name):
            missing = [name for name in by_name if name not in decoded]
            raise ProtocolError(f"missing input '{missing[0]}'")
        binary_output = params.get("binary_data_output", False)
        if not isinstance(binary_output, bool):
            raise ProtocolError("binary_data_output must be true or false")
        if request.get("outputs") is None:
            wanted = self._default_outputs[binary_output]
        else:
            wanted = _requested_outputs(request, self.outputs, binary_output)
        return InferRequest(request_id, decoded, wanted, params)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """Build a response body; the int is the JSON header length when binary outputs follow."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for wanted, arr in outputs:
        datatype = wanted.spec.datatype
        entry: dict[str, Any] = {"name": wanted.spec.name, "datatype": datatype, "shape": arr.shape}
        if wanted.binary:
            raw = encode_binary(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = encode_json(arr, datatype)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The model metadata response (shape -1 marks the batch dimension)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.to_dict() for spec in inputs],
        "outputs": [spec.to_dict() for spec in outputs],
    }


def server_metadata(name: str, version: str) -> dict[str, Any]:
    """The server metadata response."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def _check_json_values(head: bytes | memoryview, inputs: int, limits: RequestLimits) -> None:
    """Refuse a JSON document with more values than the tensors may hold, before parsing it.

    Parsing costs about 30 bytes of memory per array element, so a body at the size cap could
    take gigabytes: counting commas (each element but an array's first follows one) is cheap
    and bounds that by ``max_tensor_elements`` instead.
    """
    budget = limits.max_tensor_elements * max(inputs, 1) + 1024
    if len(head) <= budget:
        return
    raw = head if isinstance(head, bytes) else bytes(head)
    if raw.count(b",") > budget:
        raise PayloadTooLarge(
            f"the JSON body holds more than {budget} values, above the limit of "
            f"{limits.max_tensor_elements} elements per tensor (max_tensor_elements)"
        )


def _load_json(data: memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raw = bytes(data)
        if b"NaN" in raw or b"Infinity" in raw:
            raise ProtocolError(
                "malformed JSON: NaN and Infinity are not JSON; tensor data must be finite"
            ) from None
        raise ProtocolError(f"malformed JSON: {exc}") from None


def _params(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if type(params) is not dict:
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    return params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_header(
    raw: Any, by_name: Mapping[str, TensorSpec], seen: Mapping[str, np.ndarray]
) -> tuple[str, str, list[int]]:
    if not isinstance(raw, dict):
        raise ProtocolError("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError("each input needs a string 'name'")
    if name not in by_name:
        expected = ", ".join(f"'{n}'" for n in by_name)
        raise ProtocolError(f"unknown input '{name}'; the model expects {expected}")
    if name in seen:
        raise ProtocolError(f"input '{name}' appears twice")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise ProtocolError(f"input '{name}' has unknown datatype {datatype!r}")
    shape = raw.get("shape")
    if type(shape) is not list:
        raise ProtocolError(f"input '{name}': 'shape' must be an array of non-negative integers")
    for d in shape:
        # JSON integers parse as exactly int (true and false are bools, not ints).
        if type(d) is not int or d < 0:
            raise ProtocolError(
                f"input '{name}': 'shape' must be an array of non-negative integers"
            )
    return name, datatype, shape


def _check_shape(name: str, shape: list[int], expected: Sequence[int]) -> None:
    fits = len(shape) == len(expected)
    if fits:
        for d, e in zip(shape, expected, strict=True):
            if d != e and e != -1:
                fits = False
                break
    if not fits:
        raise ProtocolError(
            f"input '{name}' has shape {shape} but the model expects {list(expected)}"
        )
    if shape and shape[0] == 0:
        raise ProtocolError(f"input '{name}' has an empty batch (shape {shape})")


def _requested_outputs(
    request: Mapping[str, Any], outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[RequestedOutput, ...]:
    raw_outputs = request.get("outputs")
    if raw_outputs is None:
        return tuple(RequestedOutput(spec, binary_default) for spec in outputs)
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be an array")
    by_name = {spec.name: spec for spec in outputs}
    wanted: dict[str, RequestedOutput] = {}
    for raw in raw_outputs:
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            raise ProtocolError("each requested output needs a string 'name'")
        if name not in by_name:
            known = ", ".join(f"'{n}'" for n in by_name)
            raise ProtocolError(f"unknown output '{name}'; the model has {known}")
        if name in wanted:
            raise ProtocolError(f"output '{name}' is requested twice")
        params = _params(raw, f"output '{name}'")
        for key in _UNSUPPORTED_OUTPUT_PARAMS:
            if key in params:
                raise ProtocolError(f"output '{name}': parameter '{key}' is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output '{name}': binary_data must be true or false")
        wanted[name] = RequestedOutput(by_name[name], binary)
    return tuple(wanted.values())
