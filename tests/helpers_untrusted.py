"""Hostile inputs for the checks the control plane runs on untrusted work (no tests here):
a script that is costly to compile, and an ONNX model that passes every check but runs as
long as its author likes."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers_models import CLASSES, SHAPE


def hostile_script(size: int) -> bytes:
    """Valid Python of ``size`` bytes whose compilation takes about 450 bytes of memory per
    byte of source and seconds of one core: one huge list display."""
    head, tail = b"x = [", b"]\n"
    body = b"1," * ((size - len(head) - len(tail)) // 2)
    return (head + body + tail).ljust(size, b" ")


def slow_onnx(trips: int) -> bytes:
    """A model of the test image signature (UINT8 ``[-1, 6, 6, 1]`` in, ``probabilities``
    ``[-1, 3]`` out, rows summing to 1) whose answer waits for a Loop of ``trips`` steps."""
    features = int(np.prod(SHAPE))
    weights = np.random.default_rng(0).standard_normal((features, len(CLASSES)))
    body = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "one"], ["v_sum"]),
            helper.make_node("Sin", ["v_sum"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    nodes = [
        helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["xf"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body),
        helper.make_node("Mul", ["v", "zero"], ["nothing"]),
        helper.make_node("Add", ["logits", "nothing"], ["shifted"]),
        helper.make_node("Softmax", ["shifted"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, [None, *SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(CLASSES)])],
        [
            numpy_helper.from_array((weights / 1000).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.zeros(1, np.float32), "v0"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def slow_model_dir(directory: Path, base: Path, trips: int) -> Path:
    """``base``'s spec and weights with :func:`slow_onnx` as its ``model.onnx``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("spec.json", "weights.safetensors"):
        shutil.copy(base / name, directory / name)
    (directory / "model.onnx").write_bytes(slow_onnx(trips))
    return directory


class Prober:
    """Calls ``url`` every ``interval`` seconds from a thread while in its block and keeps
    each call's latency (a call that fails counts as the time it took to fail)."""

    def __init__(self, url: str, interval: float = 0.05, headers: dict[str, str] | None = None):
        self.url, self.interval, self.headers = url, interval, headers or {}
        self.latencies: list[float] = []
        self.failures = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        with httpx.Client(timeout=120, headers=self.headers) as client:
            while not self._done.wait(self.interval):
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def peak_rss(pid: int) -> int:
    """The peak resident memory of process ``pid`` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmHWM for {pid}")
