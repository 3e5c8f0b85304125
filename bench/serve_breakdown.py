"""Where a replica's CPU goes per inference request, layer by layer: prints figures, asserts
nothing. Complements bench/serve.py, whose "CPU us/req" column is the whole process's CPU
time per request under wrk (HTTP stack and kernel included).

Each layer is timed in-process (CPU time of this process, best of 5 repeats) on the very
request bench/serve.py sends (the seed CNN, one 28x28x1 UINT8 image), through the objects a
replica runs:

- auth: the bearer token check (header split, SHA-256, set lookup);
- decode: the OIP v2 codec on the JSON body and on the binary-extension body;
- forward: ONNX Runtime, one thread, per row at batch sizes 1, 16 and 32;
- encode: the JSON response body;
- metrics: one request counted;
- fast path, whole: ``InferenceApp.handle`` for 16 concurrent requests on a real event loop
  with the real batcher, up to the reply callback (decode + batch + forward + encode +
  metrics; no HTTP).

Run: .venv/bin/python bench/serve_breakdown.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from serve import TOKEN, build_model_dir, request_bodies

from nimbus.security import hash_token
from nimbus.serving import asgi
from nimbus.serving.access import TokenHashes
from nimbus.serving.app import InferenceApp, create_app

REPEATS = 5


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """CPU microseconds per call of ``fn``, best of :data:`REPEATS` runs of ``n`` calls."""
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


class Round:
    """16 requests in flight; ``done`` resolves once each has its answer."""

    def __init__(self, done: asyncio.Future[None], count: int) -> None:
        self.done = done
        self.left = count

    def reply(self, status: int, out: bytes, kind: bytes, extra: asgi.Headers) -> None:
        assert status == 200, out
        self.left -= 1
        if not self.left:
            self.done.set_result(None)


async def fast_path_us(app: InferenceApp, body: bytes, headers: asgi.Headers, n: int) -> float:
    """CPU microseconds per request through ``app.handle``, 16 requests at a time."""
    path = "/v2/models/cnn/infer"
    app.batcher.start()
    best = float("inf")
    for repeat in range(REPEATS + 1):
        start = time.process_time()
        for _ in range(n // 16):
            round_ = Round(asyncio.get_running_loop().create_future(), 16)
            for _ in range(16):
                app.handle(path, headers, body, round_.reply)
            await round_.done
        if repeat:  # the first is a warm-up
            best = min(best, (time.process_time() - start) / n * 1e6)
    await app.batcher.close()
    return best


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nimbus-bench-breakdown-") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        auth = TokenHashes([hash_token(TOKEN)])
        app = create_app(model_dir, "cnn", auth=auth)
        image = np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8)
        json_body, binary_body, header_len = request_bodies(image)
        bearer = {b"authorization": b"Bearer " + TOKEN.encode()}
        codec, predictor = app._codec, app.predictor
        request = codec.parse(json_body, None)
        binary_request = codec.parse(binary_body, header_len)
        row = request.inputs["input"]
        probabilities = predictor.run(row)
        rows: list[tuple[str, float]] = [
            ("auth (bearer token)", cpu_us(lambda: app._authorize(bearer), 20000)),
            ("decode, JSON body", cpu_us(lambda: codec.parse(json_body, None), 5000)),
            ("decode, binary body", cpu_us(lambda: codec.parse(binary_body, header_len), 5000)),
        ]
        for batch in (1, 16, 32):
            x = np.concatenate([row] * batch)
            per_batch = cpu_us(lambda x=x: predictor.run(x), 200)  # type: ignore[misc]
            rows.append((f"forward per row, batch {batch}", per_batch / batch))
        rows += [
            ("encode, JSON answer", cpu_us(lambda: app._encode(request, probabilities), 5000)),
            (
                "encode, binary answer",
                cpu_us(lambda: app._encode(binary_request, probabilities), 5000),
            ),
            ("metrics", cpu_us(lambda: app.metrics.observe_request("infer", 200, 1e-3), 20000)),
        ]
        headers = [(b"content-type", b"application/json"), *bearer.items()]
        whole = asyncio.run(fast_path_us(app, json_body, headers, 4000))
        rows.append(("fast path, whole (JSON, 16 at a time)", whole))
        print("| layer (CPU per request)                 |     us |")
        print("|-----------------------------------------|--------|")
        for label, us in rows:
            print(f"| {label:<39} | {us:6.1f} |")


if __name__ == "__main__":
    main()
