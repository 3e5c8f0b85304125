"""The fast path answers exactly as the ASGI application does, byte for byte on the wire.

Two real servers serve the same model with the same settings: one as a replica runs (small
infer and predict requests answered by its HTTP protocol), one with the fast path switched
off (everything through ASGI). The same raw requests, good and bad, go to both over sockets;
the answers must be identical but for the Date header. Then what only the fast path has to
get right by itself: it is really taken, bodies arriving in pieces, pipelining that mixes
fast and ASGI requests, ``Connection: close`` and HTTP/1.0, a client gone while its request
is batched, and a draining server answering through its gate.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import uvicorn

from nimbus.serving.app import InferenceApp, create_app, uvicorn_config
from nimbus.serving.fleet.drain import DrainGate
from tests.serving.helpers import body
from tests.serving.test_http import read_responses

TOKEN = "s3cret-token"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@contextmanager
def serving(
    app: InferenceApp, fast_while: Callable[[], bool] | None = None, gate: DrainGate | None = None
) -> Iterator[int]:
    """``app`` on an ephemeral port (fast path on, or as ``fast_while`` says; ``gate`` in
    front of the ASGI app as in a replica); yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn_config(app, "127.0.0.1", port, fast_while=fast_while)
    if gate is not None:
        config.app = gate
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(path: str, payload: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        version,
        b"".join(headers),
        len(payload),
        payload,
    )


JSON = b"Content-Type: application/json\r\n"
INFER = "/v2/models/m/infer"
GOOD = orjson.dumps(body(3))
HEADER = orjson.dumps(
    {
        "inputs": [
            {"name": "input", "datatype": "UINT8", "shape": [1, 6, 6, 1], "parameters": {}},
        ],
        "parameters": {"binary_data_output": True},
    }
)
BINARY_HEAD = orjson.loads(HEADER)
BINARY_HEAD["inputs"][0]["parameters"]["binary_data_size"] = 36
BINARY = orjson.dumps(BINARY_HEAD)

IMAGE_REQUESTS = {
    "json": post(INFER, GOOD, JSON, AUTH),
    "versioned": post("/v2/models/m/versions/1/infer", GOOD, JSON, AUTH),
    "binary": post(
        INFER,
        BINARY + bytes(range(36)),
        b"Inference-Header-Content-Length: %d\r\n" % len(BINARY),
        AUTH,
    ),
    "no token": post(INFER, GOOD, JSON),
    "wrong token": post(INFER, GOOD, JSON, b"Authorization: Bearer nope\r\n"),
    "not bearer": post(INFER, GOOD, JSON, b"Authorization: Basic " + TOKEN.encode() + b"\r\n"),
    "malformed json": post(INFER, b'{"inputs": [', JSON, AUTH),
    "not an object": post(INFER, b"[1, 2]", JSON, AUTH),
    "nan": post(INFER, GOOD.replace(b"[3,", b"[NaN,"), JSON, AUTH),
    "wrong shape": post(INFER, GOOD.replace(b"[1,6,6,1]", b"[1,6,6,2]"), JSON, AUTH),
    "too many values": post(INFER, GOOD.replace(b"[3,", b"[3,3,"), JSON, AUTH),
    "out of range": post(INFER, GOOD.replace(b"[3,", b"[300,"), JSON, AUTH),
    "booleans": post(INFER, GOOD.replace(b"[3,", b"[true,"), JSON, AUTH),
    "unknown input": post(INFER, GOOD.replace(b'"input"', b'"x"'), JSON, AUTH),
    "bad header length": post(INFER, GOOD, b"Inference-Header-Content-Length: +12\r\n", AUTH),
    "header length past body": post(
        INFER, GOOD, b"Inference-Header-Content-Length: 99999\r\n", AUTH
    ),
    "binary too short": post(
        INFER,
        BINARY + bytes(range(30)),
        b"Inference-Header-Content-Length: %d\r\n" % len(BINARY),
        AUTH,
    ),
    "empty body": post(INFER, b"", JSON, AUTH),
    "unknown output": post(INFER, GOOD[:-1] + b',"outputs":[{"name":"nope"}]}', JSON, AUTH),
    "http/1.0": post(INFER, GOOD, JSON, AUTH, version=b"1.0"),
    "connection close": post(INFER, GOOD, JSON, AUTH, b"Connection: close\r\n"),
    "wrong model": post("/v2/models/other/infer", GOOD, JSON, AUTH),
    "wrong version": post("/v2/models/m/versions/7/infer", GOOD, JSON, AUTH),
    "get on infer": b"GET /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
    "image predict": post("/v2/models/m/predict", b"not an image", AUTH),
}

TABULAR_REQUESTS = {
    "features": post("/v2/models/t/predict", b'{"features": [1.5, -2, 0.25]}', JSON),
    "features too few": post("/v2/models/t/predict", b'{"features": [1.5]}', JSON),
    "features not finite": post("/v2/models/t/predict", b'{"features": [1e999, 1, 1]}', JSON),
    "not json": post("/v2/models/t/predict", b"features=1", JSON),
    "form": post(
        "/v2/models/t/predict",
        b"features=1",
        b"Content-Type: application/x-www-form-urlencoded\r\n",
    ),
    "infer": post(
        "/v2/models/t/infer",
        b'{"inputs":[{"name":"features","datatype":"FP32","shape":[2,3],"data":[1,2,3,4,5,6]}]}',
        JSON,
    ),
}


def exchange(port: int, request: bytes) -> bytes:
    """Send one request on a fresh connection; the raw answer, Date header removed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        (head, payload), *_ = read_responses(sock, 1)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def answers(app: InferenceApp, requests: dict[str, bytes], fast: bool) -> dict[str, bytes]:
    with serving(app, None if fast else lambda: False) as port:
        return {name: exchange(port, request) for name, request in requests.items()}


@pytest.fixture
def image_app(image_model_dir: Path) -> InferenceApp:
    """An app to serve once (shutting a server down closes its app's batcher)."""
    return create_app(image_model_dir, "m", auth=lambda token: token == TOKEN)


def test_fast_and_asgi_answers_are_identical(
    image_app: InferenceApp, image_model_dir: Path, tabular_model_dir: Path
) -> None:
    taken: list[str] = []
    handle = image_app.handle

    def counting(path: str, *args: object) -> None:
        taken.append(path)
        handle(path, *args)  # type: ignore[arg-type]

    image_app.handle = counting  # type: ignore[method-assign, assignment]
    fast = answers(image_app, IMAGE_REQUESTS, fast=True)
    slow = answers(
        create_app(image_model_dir, "m", auth=lambda token: token == TOKEN), IMAGE_REQUESTS, False
    )
    for name in IMAGE_REQUESTS:
        assert fast[name] == slow[name], name
    # The fast path was taken for the model's infer POSTs, and for nothing else.
    fast_routes = (b"POST /v2/models/m/infer ", b"POST /v2/models/m/versions/1/infer ")
    assert len(taken) == sum(1 for r in IMAGE_REQUESTS.values() if r.startswith(fast_routes))
    assert fast["json"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert fast["no token"].startswith(b"HTTP/1.1 401")
    assert b"www-authenticate: Bearer" in fast["wrong token"]
    assert fast["nan"].startswith(b"HTTP/1.1 400") and b"NaN" in fast["nan"]
    assert fast["http/1.0"].endswith(slow["json"].split(b"\r\n\r\n", 1)[1])
    assert b"connection: close" in fast["http/1.0"]
    assert b"connection: close" in fast["connection close"]

    fast = answers(create_app(tabular_model_dir, "t"), TABULAR_REQUESTS, fast=True)
    slow = answers(create_app(tabular_model_dir, "t"), TABULAR_REQUESTS, fast=False)
    for name in TABULAR_REQUESTS:
        assert fast[name] == slow[name], name
    assert fast["features"].startswith(b"HTTP/1.1 200") and b'"probabilities"' in fast["features"]
    assert fast["features too few"].startswith(b"HTTP/1.1 400")


def test_a_body_in_pieces_pipelining_and_close(image_app: InferenceApp) -> None:
    good = IMAGE_REQUESTS["json"]
    metadata = b"GET /v2/models/m HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
    with serving(image_app) as port:
        expected = exchange(port, good).split(b"\r\n\r\n", 1)[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Headers first, then the body in two pieces, with pauses between.
            split = good.index(b"\r\n\r\n") + 4
            for piece in (good[:split], good[split : split + 100], good[split + 100 :]):
                sock.sendall(piece)
                time.sleep(0.05)
            assert read_responses(sock, 1)[0][1] == expected
            # Fast, ASGI, fast with an error, fast: sent at once, answered in order.
            bad = IMAGE_REQUESTS["malformed json"]
            sock.sendall(good + metadata + bad + good)
            replies = read_responses(sock, 4)
        assert replies[0][1] == expected and replies[3][1] == expected
        assert b'"platform"' in replies[1][1]
        assert replies[2][0].startswith(b"HTTP/1.1 400")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(IMAGE_REQUESTS["connection close"])
            read_responses(sock, 1)
            assert sock.recv(1024) == b""  # the server closed the connection


def test_a_client_gone_while_batched_leaves_the_server_serving(image_app: InferenceApp) -> None:
    with serving(image_app) as port:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(IMAGE_REQUESTS["json"])
            sock.close()  # before the answer
        assert exchange(port, IMAGE_REQUESTS["json"]).startswith(b"HTTP/1.1 200 OK")


def test_a_draining_server_answers_through_its_gate(image_app: InferenceApp) -> None:
    gate = DrainGate(image_app)
    taken: list[str] = []
    handle = image_app.handle

    def counting(path: str, *args: object) -> None:
        taken.append(path)
        handle(path, *args)  # type: ignore[arg-type]

    image_app.handle = counting  # type: ignore[method-assign, assignment]
    try:
        with serving(image_app, lambda: not gate.draining, gate) as port:
            open_answer = exchange(port, IMAGE_REQUESTS["json"])
            gate.draining = True
            draining_answer = exchange(port, IMAGE_REQUESTS["json"])
    finally:
        image_app.handle = handle  # type: ignore[method-assign]
    assert taken == [INFER]  # the second request went through the gate, not the fast path
    assert open_answer.startswith(b"HTTP/1.1 200 OK") and b"connection:" not in open_answer
    assert draining_answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in draining_answer
    assert draining_answer.split(b"\r\n\r\n")[1] == open_answer.split(b"\r\n\r\n")[1]
