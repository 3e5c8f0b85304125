"""Property tests of the inference server (issue 9): malformed bodies, headers and paths sent
over real sockets to real replica processes (image, text and tabular models). Every answer is
below 500, and every refusal is a 4xx whose JSON ``{"error": ...}`` says what is wrong.

Examples are derandomized so a run is reproducible; ``NIMBUS_FUZZ_EXAMPLES`` explores further.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.serving.test_hostile import Replica

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("NIMBUS_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
HEADER_LENGTH = b"Inference-Header-Content-Length"

# Integers where parsers break: the edges of 32 and 64 bits, past them, negative.
edge_ints = st.sampled_from([0, -1, 1, 255, 256, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30])
ints = st.integers() | edge_ints | st.integers(min_value=-(2**70), max_value=2**70)
json_scalars = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
numbers = st.lists(ints | st.floats(allow_nan=False, allow_infinity=False), max_size=40)


NUMPY = {"BOOL": "?", "UINT8": "u1", "INT8": "i1", "INT32": "<i4", "INT64": "<i8"}
NUMPY |= {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


@dataclass(frozen=True)
class Served:
    """A client of one replica and what its model's input is."""

    client: httpx.Client
    name: str
    datatype: str
    row: list[int]  # the input's shape after the batch dimension


def elements(datatype: str, count: int) -> st.SearchStrategy[list[Any]]:
    """``count`` valid elements of ``datatype``, as JSON tensor data holds them."""
    element: st.SearchStrategy[Any]
    if datatype == "BYTES":
        element = st.text(max_size=12)
    elif datatype.startswith("FP"):
        element = st.floats(-1e4, 1e4, width=16 if datatype == "FP16" else 32)
    elif datatype == "BOOL":
        element = st.booleans()
    else:
        info = np.iinfo(np.dtype(NUMPY[datatype]))
        element = st.integers(int(info.min), int(info.max))
    return st.lists(element, min_size=count, max_size=count)


def binary(data: list[Any], datatype: str) -> bytes:
    """``data`` as the binary tensor extension writes it."""
    if datatype == "BYTES":
        raw = [str(v).encode() for v in data]
        return b"".join(struct.pack("<I", len(r)) + r for r in raw)
    return np.asarray(data, dtype=NUMPY[datatype]).tobytes()


@st.composite
def tensors(draw: st.DrawFn, served: Served, in_binary: bool) -> tuple[dict[str, Any], bytes]:
    """A valid input (JSON data, or binary bytes for the tail of the body), then up to three
    of its parts bent out of shape."""
    shape = [draw(st.integers(1, 3)), *served.row]
    data = draw(elements(served.datatype, int(np.prod(shape))))
    tensor: dict[str, Any] = {"name": served.name, "datatype": served.datatype, "shape": shape}
    tail = b""
    if in_binary:
        tail = binary(data, served.datatype)
        tensor["parameters"] = {"binary_data_size": len(tail)}
    else:
        tensor["data"] = data
    for _ in range(draw(st.integers(0, 3))):
        part = draw(st.sampled_from(["name", "datatype", "shape", "data", "size", "tail", "drop"]))
        if part == "name":
            tensor["name"] = draw(st.sampled_from(["", "other", served.name.upper()]) | json_values)
        elif part == "datatype":
            tensor["datatype"] = draw(st.sampled_from(DATATYPES) | json_values)
        elif part == "shape":
            tensor["shape"] = draw(
                st.lists(ints, max_size=5)
                | st.lists(st.integers(0, 4), max_size=5)
                | edge_ints.map(lambda n: [n, *served.row])
                | json_values
            )
        elif part == "data":
            tensor["data"] = draw(numbers | st.lists(st.text(max_size=4), max_size=8) | json_values)
        elif part == "size":
            params = tensor.setdefault("parameters", {})
            if isinstance(params, dict):
                params["binary_data_size"] = draw(ints | json_values)
        elif part == "tail":
            tail = draw(st.binary(max_size=64) | st.just(tail[: len(tail) // 2]))
        elif tensor:
            del tensor[draw(st.sampled_from(sorted(tensor)))]
    return tensor, tail


@st.composite
def infer_bodies(
    draw: st.DrawFn, served: Served, in_binary: bool = False
) -> tuple[dict[str, Any], bytes]:
    """An infer body near a valid one (one input, seldom none or two) and its binary tail."""
    drawn = draw(
        st.lists(tensors(served, in_binary), min_size=1, max_size=1)
        | st.lists(tensors(served, in_binary), max_size=2)
    )
    body: dict[str, Any] = {"inputs": [tensor for tensor, _ in drawn]}
    if draw(st.booleans()):
        body["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["probabilities", "label", "x"]) | json_values},
                    optional={"parameters": st.fixed_dictionaries({"binary_data": json_values})},
                )
                | json_values,
                max_size=3,
            )
        )
    if draw(st.booleans()):
        body["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_output": st.booleans() | json_values}) | json_values
        )
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=8) | json_values)
    return body, b"".join(tail for _, tail in drawn)


# Header values that are not a plain number: signs, underscores, superscripts, other
# scripts' digits, bytes that are not UTF-8.
odd_numbers = st.sampled_from(
    [b"", b"-1", b"+5", b"1_0", b"0x10", b"1e3", b"\xc2\xb2", b"\xd9\xa1", b"\xff", b"9" * 40]
)


def dumps(value: Any) -> bytes:
    """JSON bytes; integers past 64 bits too (orjson refuses them; clients may send them)."""
    return json.dumps(value).encode()


def check(response: httpx.Response) -> None:
    """Below 500; a refusal is a 4xx with a JSON error message."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
        assert body["error"].strip(), body


@pytest.fixture(scope="module", params=["image", "text", "tabular"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """A replica of the image, text or tabular model, and what its input is."""
    model_dir: Path = request.getfixturevalue(f"{request.param}_model_dir")
    r = Replica(model_dir)
    try:
        with httpx.Client(base_url=r.url, timeout=30) as client:
            spec = client.get("/v2/models/m").json()["inputs"][0]
            yield Served(client, spec["name"], spec["datatype"], list(spec["shape"][1:]))
    finally:
        r.stop()


def test_json_infer_bodies(served: Served) -> None:
    @FUZZ
    @given(body=infer_bodies(served).map(lambda drawn: drawn[0]) | json_values)
    def run(body: Any) -> None:
        check(served.client.post("/v2/models/m/infer", content=dumps(body)))

    run()


def test_binary_extension_bodies(served: Served) -> None:
    @FUZZ
    @given(
        drawn=infer_bodies(served, in_binary=True),
        length=st.none() | ints.map(lambda n: str(n).encode()) | odd_numbers,
    )
    def run(drawn: tuple[dict[str, Any], bytes], length: bytes | None) -> None:
        head = dumps(drawn[0])
        headers = {HEADER_LENGTH: str(len(head)).encode() if length is None else length}
        check(served.client.post("/v2/models/m/infer", content=head + drawn[1], headers=headers))

    run()


def test_raw_bodies_and_headers(served: Served) -> None:
    """Bytes that are not JSON (nor UTF-8), compressed or claiming to be, to both routes."""
    client = served.client

    @FUZZ
    @given(
        route=st.sampled_from(["infer", "predict"]),
        body=st.binary(max_size=400)
        | st.sampled_from([b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff\xe0junk", b"{"]),
        encoding=st.sampled_from([None, b"gzip", b"deflate", b"br", b"\xff", b"GZIP"]),
        compress=st.booleans(),
        content_type=st.sampled_from([None, b"application/json", b"image/png", b"text/\xff"]),
    )
    def run(
        route: str,
        body: bytes,
        encoding: bytes | None,
        compress: bool,
        content_type: bytes | None,
    ) -> None:
        headers: dict[bytes, bytes] = {}
        if encoding is not None:
            headers[b"Content-Encoding"] = encoding
            if compress and encoding.lower() == b"gzip":
                body = gzip.compress(body)
        if content_type is not None:
            headers[b"Content-Type"] = content_type
        check(client.post(f"/v2/models/m/{route}", content=body, headers=headers))

    run()


def test_predict_json_bodies(served: Served) -> None:
    client = served.client

    @FUZZ
    @given(
        body=st.fixed_dictionaries({"text": json_values})
        | st.fixed_dictionaries({"features": json_values | numbers})
        | st.fixed_dictionaries({"text": st.text()})
        | json_values
    )
    def run(body: Any) -> None:
        check(client.post("/v2/models/m/predict", content=dumps(body)))

    run()


def test_paths_and_methods(served: Served) -> None:
    client = served.client
    segment = st.sampled_from(["m", "versions", "1", "ready", "infer", "predict", ""]) | st.text(
        max_size=6
    )

    @FUZZ
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        prefix=st.sampled_from(["/v2/models/", "/v2/", "/", "/v2/health/", "/metrics/"]),
        segments=st.lists(segment, max_size=4),
    )
    def run(method: str, prefix: str, segments: list[str]) -> None:
        path = prefix + "/".join(quote(s, safe="") for s in segments)
        url = f"{str(client.base_url).rstrip('/')}{path}"  # an absolute URL: '//' is a path too
        response = client.request(method, url, content=b"{}" if method != "GET" else None)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        if response.status_code >= 400 and method != "HEAD":
            check(response)

    run()
