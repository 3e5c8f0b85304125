"""The OIP v2 codec, without a server: every datatype, both encodings, every refusal."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.http import InferResult
from tritonclient.utils import serialize_byte_tensor

from nimbus.errors import PayloadTooLarge
from nimbus.modelformat.dtypes import DTYPES, TensorSpec
from nimbus.serving.errors import ProtocolError
from nimbus.serving.protocol import (
    RequestedOutput,
    RequestLimits,
    encode_infer_response,
    model_metadata,
    parse_header_length,
    parse_infer_request,
    server_metadata,
)

NUMERIC = [d for d in DTYPES if d != "BYTES"]
OUTPUTS = (TensorSpec("probabilities", "FP32", (-1, 3)), TensorSpec("label", "BYTES", (-1,)))
IMAGE = TensorSpec("input", "UINT8", (-1, 2, 2))


def sample(datatype: str) -> np.ndarray:
    """A [2, 2, 2] array exercising the datatype's range."""
    if datatype == "BOOL":
        return np.array([True, False] * 4).reshape(2, 2, 2)
    dtype = DTYPES[datatype]
    if dtype.kind == "f":
        return np.linspace(-2.5, 3.25, 8, dtype=dtype).reshape(2, 2, 2)
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.max - 1, info.min + 1, 7, 42]
    return np.array(values, dtype=dtype).reshape(2, 2, 2)


def body_for(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(data: Any, shape: list[int] | None = None, datatype: str = "UINT8") -> dict[str, Any]:
    return {"name": "input", "datatype": datatype, "shape": shape or [1, 2, 2], "data": data}


def parse(body: bytes, spec: TensorSpec = IMAGE, header: int | None = None) -> Any:
    return parse_infer_request(body, header, (spec,), OUTPUTS)


def binary_body(
    spec_inputs: list[dict[str, Any]], chunks: list[bytes], **extra: Any
) -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": spec_inputs, **extra})
    return head + b"".join(chunks), len(head)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("nested", [False, True])
def test_json_tensor_of_every_numeric_datatype(datatype: str, nested: bool) -> None:
    expected = sample(datatype)
    data = expected.tolist() if nested else expected.reshape(-1).tolist()
    spec = TensorSpec("input", datatype, (-1, 2, 2))
    request = parse(body_for(tensor(data, [2, 2, 2], datatype)), spec)
    got = request.inputs["input"]
    assert got.dtype == DTYPES[datatype] and got.shape == (2, 2, 2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_tensor_of_every_numeric_datatype(datatype: str) -> None:
    expected = sample(datatype)
    raw = expected.astype(DTYPES[datatype]).tobytes()
    entry: dict[str, Any] = {"name": "input", "datatype": datatype, "shape": [2, 2, 2]}
    entry["parameters"] = {"binary_data_size": len(raw)}
    body, header = binary_body([entry], [raw])
    got = parse(body, TensorSpec("input", datatype, (-1, 2, 2)), header).inputs["input"]
    np.testing.assert_array_equal(got, expected)


def test_bytes_tensor_json_nested_and_binary() -> None:
    spec = TensorSpec("text", "BYTES", (-1, 2))
    words = [["héllo", ""], ["a b", "z"]]
    request = parse(body_for(tensor(words, [2, 2], "BYTES") | {"name": "text"}), spec)
    assert request.inputs["text"].tolist() == [[w.encode() for w in row] for row in words]

    raw = serialize_byte_tensor(np.array(words, dtype=object)).item()
    entry: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [2, 2]}
    entry["parameters"] = {"binary_data_size": len(raw)}
    body, header = binary_body([entry], [raw])
    got = parse(body, spec, header).inputs["text"]
    assert got.tolist() == [[w.encode() for w in row] for row in words]


def test_two_inputs_mixing_binary_and_json_and_request_options() -> None:
    specs = (TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT64", (-1,)))
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    b = np.array([3, 4], dtype=np.int64)
    inputs = [
        {"name": "b", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
        {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": a.tolist()},
    ]
    outputs = [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}]
    extra = {"id": "r1", "outputs": outputs, "parameters": {"binary_data_output": True}}
    body, header = binary_body(inputs, [b.tobytes()], **extra)
    request = parse_infer_request(body, header, specs, OUTPUTS)
    assert request.id == "r1"
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)
    assert [(o.spec.name, o.binary) for o in request.outputs] == [
        ("label", False),
        ("probabilities", True),
    ]


def test_outputs_default_to_all_in_json_or_binary() -> None:
    request = parse(body_for(tensor([1, 2, 3, 4])))
    assert request.id is None
    assert [(o.spec.name, o.binary) for o in request.outputs] == [
        ("probabilities", False),
        ("label", False),
    ]
    binary = parse(body_for(tensor([1, 2, 3, 4]), parameters={"binary_data_output": True}))
    assert all(o.binary for o in binary.outputs)


GOOD = tensor([1, 2, 3, 4])
JSON_ERRORS: list[tuple[bytes, str]] = [
    (b"{not json", "malformed JSON"),
    (b'{"inputs": [{"data": [NaN]}]}', "NaN and Infinity are not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (body_for(GOOD, id=7), "'id' must be a string"),
    (orjson.dumps({}), "'inputs' must be a non-empty array"),
    (orjson.dumps({"inputs": []}), "'inputs' must be a non-empty array"),
    (orjson.dumps({"inputs": [5]}), "each input must be a JSON object"),
    (body_for(GOOD | {"name": 3}), "needs a string 'name'"),
    (body_for(GOOD | {"name": "image"}), "unknown input 'image'; the model expects 'input'"),
    (body_for(GOOD, GOOD), "input 'input' appears twice"),
    (body_for(GOOD | {"datatype": "FP8"}), "unknown datatype 'FP8'"),
    (body_for(GOOD | {"datatype": "FP32"}), "has datatype FP32 but the model expects UINT8"),
    (body_for(GOOD | {"shape": [1, 4]}), "has shape [1, 4] but the model expects [-1, 2, 2]"),
    (body_for(GOOD | {"shape": [1, 2, 3]}), "has shape [1, 2, 3] but the model expects"),
    (body_for(GOOD | {"shape": [1, 2, -2]}), "'shape' must be an array of non-negative"),
    (body_for(GOOD | {"shape": "1,2,2"}), "'shape' must be an array of non-negative"),
    (body_for(tensor([], [0, 2, 2])), "has an empty batch"),
    (body_for(tensor([1, 2, 3])), "shape holds 4 elements but data holds 3"),
    (body_for(tensor([[1, 2], [3]])), "shape holds 4 elements but data holds 3"),
    (body_for(tensor([[1, 2], 3, 4])), "data is ragged"),
    (body_for(tensor([[1, [2]], [3, 4]])), "data is ragged"),
    (body_for(tensor([["a", "b"], [3, 4]])), "data must hold only numbers"),
    (body_for(tensor(5)), "data must be a JSON array"),
    (body_for(tensor(["a", "b", "c", "d"])), "data must hold only numbers for UINT8"),
    (body_for(tensor([1, None, 3, 4])), "data must hold only numbers for UINT8"),
    (body_for(tensor([1.5, 2, 3, 4])), "UINT8 data must hold only integers"),
    (body_for(tensor([1, 2, 256, 4])), "element 2 (256) is out of range for UINT8"),
    (body_for(tensor([1, -1, 2, 4])), "element 1 (-1) is out of range for UINT8"),
    (body_for(tensor([True, False, True, True])), "holds true/false but UINT8 expects"),
    (body_for(GOOD | {"parameters": []}), "'parameters' must be a JSON object"),
    (body_for({k: v for k, v in GOOD.items() if k != "data"}), "neither 'data' nor binary"),
    (body_for(GOOD | {"parameters": {"binary_data_size": 4}}), "has both 'data' and binary"),
    (body_for(GOOD, outputs={}), "'outputs' must be an array"),
    (body_for(GOOD, parameters={"binary_data_output": "yes"}), "binary_data_output must be"),
    (body_for(GOOD, outputs=[{"name": "logits"}]), "unknown output 'logits'; the model has"),
    (body_for(GOOD, outputs=[{}]), "each requested output needs a string 'name'"),
    (body_for(GOOD, outputs=[{"name": "label"}] * 2), "output 'label' is requested twice"),
    (
        body_for(GOOD, outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        "parameter 'classification' is not supported",
    ),
    (
        body_for(GOOD, outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
        "binary_data must be true or false",
    ),
]


@pytest.mark.parametrize(("body", "message"), JSON_ERRORS)
def test_json_request_errors(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=None) as caught:
        parse(body)
    assert message in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("BOOL", [1, 0], "BOOL data must hold only true/false"),
        ("FP32", [True, False], "holds true/false but FP32 expects numbers"),
        ("FP16", [1.0, 70000.0], "element 1 (np.float64(70000.0)) is out of range for FP16"),
        ("FP32", [1.0, 1e39], "element 1 (np.float64(1e+39)) is out of range for FP32"),
        ("INT8", [1, 128], "element 1 (128) is out of range for INT8"),
        ("INT64", [1, 2**63], "data holds values out of range for INT64"),
        ("INT64", [2**64 - 1, -1], "data holds values out of range for INT64"),
        ("UINT64", [-1, 2**64 - 1], "data holds values out of range for UINT64"),
        ("UINT64", [1.0, 2**64 - 1], "UINT64 data must hold only integers"),
        ("BYTES", ["a", 1], "BYTES data must hold only strings"),
        ("BYTES", ["a"], "shape holds 2 elements but data holds 1"),
    ],
)
def test_json_datatype_errors(datatype: str, data: list[Any], message: str) -> None:
    spec = TensorSpec("input", datatype, (-1,))
    with pytest.raises(ProtocolError) as caught:
        parse(body_for(tensor(data, [2], datatype)), spec)
    assert message in caught.value.message


def test_caps_are_checked_from_the_shape_before_the_data_is_decoded() -> None:
    limits = RequestLimits(max_batch_rows=2, max_tensor_elements=12)
    ok = parse_infer_request(body_for(tensor([0] * 8, [2, 2, 2])), None, (IMAGE,), OUTPUTS, limits)
    assert ok.inputs["input"].shape == (2, 2, 2)
    # The data is nonsense: refused on the shape alone, before anyone looks at it.
    for shape, message in (
        ([3, 2, 2], "has 3 rows, above the limit of 2 rows per request (max_batch_rows)"),
        ([2, 2, 4], "has 16 elements, above the limit of 12 elements per tensor"),
    ):
        spec = TensorSpec("input", "UINT8", (-1, 2, shape[2]))
        with pytest.raises(PayloadTooLarge) as caught:
            parse_infer_request(body_for(tensor("x", shape)), None, (spec,), OUTPUTS, limits)
        assert message in caught.value.message and caught.value.status == 413
    with pytest.raises(ValueError):
        RequestLimits(max_batch_rows=0)
    # More values in the JSON than the caps allow: refused before the JSON is parsed.
    flood = body_for(tensor([0] * 2000, [2, 2, 2]))
    with pytest.raises(PayloadTooLarge, match="holds more than 1036 values"):
        parse_infer_request(flood, None, (IMAGE,), OUTPUTS, limits)


def test_data_longer_than_its_shape_stops_early() -> None:
    with pytest.raises(ProtocolError, match="shape holds 4 elements but data has 5 entries"):
        parse(body_for(tensor([1, 2, 3, 4, 5])))
    spec = TensorSpec("input", "BYTES", (-1,))
    with pytest.raises(ProtocolError, match="shape holds 2 elements but data holds more"):
        parse(body_for(tensor([["a", "b"], ["c"]], [2], "BYTES")), spec)
    raw = b"".join(struct.pack("<I", 1) + c for c in (b"a", b"b", b"c"))
    declared = {"name": "input", "datatype": "BYTES", "shape": [2]}
    body, header = binary_body([declared | {"parameters": {"binary_data_size": len(raw)}}], [raw])
    with pytest.raises(ProtocolError, match="shape holds 2 elements but data holds more"):
        parse(body, spec, header)


def test_integers_beyond_64_bits_are_out_of_range() -> None:
    body = b'{"inputs": [{"name": "input", "datatype": "UINT64", "shape": [2], '
    body += b'"data": [1, 18446744073709551616]}]}'
    with pytest.raises(ProtocolError, match="data holds values out of range for UINT64"):
        parse(body, TensorSpec("input", "UINT64", (-1,)))


def test_uint64_above_int64_is_accepted() -> None:
    spec = TensorSpec("input", "UINT64", (-1,))
    got = parse(body_for(tensor([2**64 - 1, 0], [2], "UINT64")), spec).inputs["input"]
    assert got.tolist() == [2**64 - 1, 0]


def _binary_entry(size: Any, datatype: str = "FP32", shape: list[int] | None = None) -> Any:
    return {
        "name": "input",
        "datatype": datatype,
        "shape": shape or [1, 2],
        "parameters": {"binary_data_size": size},
    }


FP32 = TensorSpec("input", "FP32", (-1, 2))


@pytest.mark.parametrize(
    ("entry", "chunk", "spec", "message"),
    [
        (_binary_entry(4), b"\0" * 4, FP32, "binary_data_size is 4 bytes but 2 FP32 elements"),
        (_binary_entry(8), b"\0" * 12, FP32, "4 binary bytes that no input claims"),
        (_binary_entry(16), b"\0" * 8, FP32, "does not fit the 8 binary bytes left"),
        (_binary_entry(-1), b"\0" * 8, FP32, "binary_data_size -1 does not fit"),
        (
            _binary_entry(8),
            np.array([1, np.nan], dtype=np.float32).tobytes(),
            FP32,
            "element 1 is nan; only finite numbers are accepted",
        ),
        (
            _binary_entry(8),
            np.array([-np.inf, 1], dtype=np.float32).tobytes(),
            FP32,
            "element 0 is -inf",
        ),
        (
            _binary_entry(2, "BOOL"),
            b"\x01\x02",
            TensorSpec("input", "BOOL", (-1, 2)),
            "BOOL bytes must be 0 or 1",
        ),
        (
            _binary_entry(6, "BYTES"),
            struct.pack("<I", 1) + b"ab",
            TensorSpec("input", "BYTES", (-1, 2)),
            "BYTES data ends inside a length prefix",
        ),
        (
            _binary_entry(6, "BYTES"),
            struct.pack("<I", 9) + b"ab",
            TensorSpec("input", "BYTES", (-1, 2)),
            "BYTES element 0 runs past the data",
        ),
        (
            _binary_entry(6, "BYTES"),
            struct.pack("<I", 2) + b"ab",
            TensorSpec("input", "BYTES", (-1, 2)),
            "shape holds 2 elements but data holds 1",
        ),
    ],
)
def test_binary_request_errors(
    entry: dict[str, Any], chunk: bytes, spec: TensorSpec, message: str
) -> None:
    body, header = binary_body([entry], [chunk])
    with pytest.raises(ProtocolError) as caught:
        parse(body, spec, header)
    assert message in caught.value.message


def test_binary_size_without_header_length_is_refused() -> None:
    body = orjson.dumps({"inputs": [_binary_entry(8)]})
    with pytest.raises(ProtocolError, match="no Inference-Header-Content-Length"):
        parse(body, FP32, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [("x", "must be an integer"), ("0", "is 0 but the body has 10"), ("11", "is 11 but")],
)
def test_header_length_errors(value: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_header_length(value, 10)
    assert parse_header_length(None, 10) is None
    assert parse_header_length(b"10", 10) == 10


def _response(binary: bool, request_id: str | None = "abc") -> tuple[bytes, int | None]:
    probs = np.array([[0.25, 0.5, 0.25], [0.0, 0.125, 0.875]], dtype=np.float32)
    labels = np.array(["dog", "éel"], dtype=object)
    wanted = [RequestedOutput(OUTPUTS[0], binary), RequestedOutput(OUTPUTS[1], binary)]
    return encode_infer_response(
        "cnn", "3", request_id, list(zip(wanted, [probs, labels], strict=True))
    )


def test_json_response() -> None:
    body, header = _response(binary=False)
    assert header is None
    assert orjson.loads(body) == {
        "model_name": "cnn",
        "model_version": "3",
        "id": "abc",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": [0.25, 0.5, 0.25, 0.0, 0.125, 0.875],
            },
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["dog", "éel"]},
        ],
    }
    assert "id" not in orjson.loads(_response(False, None)[0])


@pytest.mark.parametrize("binary", [False, True])
def test_responses_decode_with_tritonclient(binary: bool) -> None:
    body, header = _response(binary)
    assert (header is not None) is binary
    result = InferResult.from_response_body(body, header_length=header)
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), [[0.25, 0.5, 0.25], [0.0, 0.125, 0.875]]
    )
    labels = result.as_numpy("label")
    assert [v.decode() if isinstance(v, bytes) else v for v in labels] == ["dog", "éel"]
    if binary:
        head = orjson.loads(body[:header])
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 24}
        assert "data" not in head["outputs"][0]


def test_metadata_documents() -> None:
    meta = model_metadata("cnn", ["1"], "onnxruntime_onnx", [IMAGE], OUTPUTS)
    assert meta == {
        "name": "cnn",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 2, 2]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    server = server_metadata("nimbus", "0.1.0")
    assert server["name"] == "nimbus" and "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize(
    "value", [b" 5", b"+5", b"1_0", b"\xc2\xb2", b"\xd9\xa1", b"9" * 30, b"-1"]
)
def test_header_length_is_ascii_digits_only(value: bytes) -> None:
    """``int()`` alone took ' 5', '+5' and '1_0' as lengths."""
    with pytest.raises(ProtocolError, match="must be an integer"):
        parse_header_length(value, 10)
