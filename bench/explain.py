"""Explanations benchmark (issue 13, "Faithfulness, measured"): prints figures, asserts nothing.

Models. Both are trained by ``nimbus.runtime.trainer.train``, the function a job's runtime
calls for a built-in model (``nimbus.runtime.entry._run_builtin``), with the built-in's
default parameters, on splits made by ingest's own ``plan_splits`` (seeded, stratified,
10% val, 10% test), then exported by ``export_model`` as a job exports it and rebuilt from
spec.json + weights.safetensors by ``load_torch_model``, as the explaining replica does:

- ``cnn`` on scikit-learn's bundled digits (8x8 grey, 0..255 as the demo data has them);
- ``text`` on Debian package descriptions labelled by archive section
  (bench/text_corpora.py; nothing downloaded), or ``--text-set intents`` (the generated
  demo set). Every figure is on the test split: examples the model never trained on.

1. Deletion and insertion AUC (Petsiuk et al. 2018, RISE). An example's elements (pixels;
   the filled token slots of a text) are taken in order of decreasing attribution (ties in
   random order); deletion sets the first k to the baseline (black; the padding id), for
   k = 0..K, insertion starts from the baseline and puts the first k back. The curve is the
   target class's probability against k/K and its area (trapezoids) the figure. Integrated
   Gradients (32 steps, the served default; and for images occlusion, a 2x2 window at
   stride 1, and SmoothGrad, 25 noisy copies) against random attributions (the mean over 5
   random orders per example) on the same examples. Targets: deletion AUC <= 0.7x random,
   insertion AUC >= 1.3x random (ratio of the means; medians printed too).
2. Model randomisation (Adebayo et al. 2018): the weights of every layer re-initialised
   (and cascading from the top: the last layer, then the last two, ...); the Spearman rank
   correlation of |attributions| between the trained and the randomised model, per example
   (images: all pixels, and the ink pixels only; texts: the filled slots), explaining the
   class the trained model predicted. Target: median < 0.3. The signed correlation is
   printed beside it (Adebayo et al. report both).
3. Integrated Gradients' completeness error |sum(attr) - (f(x) - f(baseline))| at 32, 64,
   128 steps, f the target's probability, computed here (and Captum's delta beside it).
   Target < 1e-2: median and p95 printed, with the steps that reach it.
4. Latency through a real replica: ``create_app`` on the exported digits model served by
   uvicorn on a thread of this process (the replica's own HTTP protocol, as
   tests/serving/test_server.py does), one client (the main thread) sending one digit,
   alternating infer, explain (Integrated Gradients, 32 steps) and explain with SmoothGrad
   (25 copies), ``--requests`` of each per round after a warm-up; the p95 of each per
   round, their ratio to infer's per round, and the median over ``--rounds``. Target
   <= 10x. Then the median of 5 explanations at each of 64, 128 and 256 steps (the cost of
   the knob's top).

The load average is printed before and after: the machine is shared, compare ratios.

Run: .venv/bin/python bench/explain.py [--quick] [--examples N] [--rounds R] [--requests N]
         [--text-set debian|intents] [--json FILE]
To see where an explanation's time goes: .venv/bin/py-spy record -r 250 --threads -o
profile.svg -- .venv/bin/python bench/explain.py --quick (the explain thread's stacks)
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import text_corpora
import torch
import uvicorn
from explain_measures import (
    attributions,
    faithfulness,
    median_of,
    probability_of,
    randomised,
    rank_correlations,
)

from nimbus.datasets.domain import Task
from nimbus.datasets.splits import plan_splits
from nimbus.demo_data import digits, intents
from nimbus.explain.options import ExplainOptions
from nimbus.modelformat.export import export_model
from nimbus.modelformat.text import TextEncoder
from nimbus.runtime.api import LocalReporter
from nimbus.runtime.architectures import load_torch_model
from nimbus.runtime.data import DataSplits, Split
from nimbus.runtime.trainer import train
from nimbus.serving.app import create_app, uvicorn_config

STEPS = (32, 64, 128)
TOLERANCE = 1e-2


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# -- models --------------------------------------------------------------------------------


def splits(task: Task, x: np.ndarray, y: np.ndarray, classes: list[str]) -> DataSplits:
    """Train / val / test as ingest makes them (seeded, stratified, 80/10/10)."""
    plan = plan_splits(y, len(classes), seed=0, val_fraction=0.1, test_fraction=0.1)
    parts = {name: Split(x=x[idx], y=y[idx]) for name, idx in plan.indices.items()}
    return DataSplits(task=task, classes=classes, **parts)


def digit_data() -> DataSplits:
    pixels, labels = digits()
    return splits(Task.IMAGE, pixels[..., None], labels, [str(c) for c in range(10)])


def text_data(name: str, quick: bool) -> DataSplits:
    if name == "debian":
        rows = text_corpora.debian_descriptions(per_class=150 if quick else 400)
    else:
        rows = intents(per_intent=60 if quick else 150)
    classes = sorted({label for _, label in rows})
    x = np.array([text for text, _ in rows], dtype=object)
    y = np.array([classes.index(label) for _, label in rows], dtype=np.int64)
    return splits(Task.TEXT, x, y, classes)


def trained(
    model: str, data: DataSplits, params: dict[str, Any], out: Path
) -> tuple[torch.nn.Module, dict[str, Any], float]:
    """Train as a job does, export, and rebuild as the replica does."""
    started = time.perf_counter()
    result = train(model, data, {"seed": 0, **params}, LocalReporter(out / "run"))
    export_model(result.model, result.spec, result.example_input, out / "model")
    seconds = time.perf_counter() - started
    assert result.evaluation is not None
    print(
        f"{model}: test accuracy {result.evaluation['accuracy']:.3f} on "
        f"{result.evaluation['support']} held-out examples (trained in {seconds:.0f} s)"
    )
    return load_torch_model(out / "model").eval(), result.spec, float(result.evaluation["accuracy"])


# -- the sections --------------------------------------------------------------------------


def section_faithfulness(
    name: str,
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    targets: np.ndarray,
    prep: dict[str, Any],
    methods: dict[str, ExplainOptions],
) -> dict[str, Any]:
    random_del, random_ins = faithfulness(module, kind, x, targets, None)
    figures: dict[str, Any] = {
        "random": {"deletion_mean": random_del.mean(), "insertion_mean": random_ins.mean()}
    }
    print(f"\n{name}: deletion / insertion AUC over {len(x)} held-out examples")
    print(f"  {'method':22} {'del mean':>9} {'del med':>8} {'ins mean':>9} {'ins med':>8}")
    row = "  {:22} {:9.3f} {:8.3f} {:9.3f} {:8.3f}"
    print(row.format("random", random_del.mean(), median(list(random_del)), random_ins.mean(),
                     median(list(random_ins))))  # fmt: skip
    for label, options in methods.items():
        scores, _ = attributions(module, kind, x, targets, options, prep)
        deletion, insertion = faithfulness(module, kind, x, targets, scores)
        ratios = {
            "deletion_ratio": deletion.mean() / random_del.mean(),
            "insertion_ratio": insertion.mean() / random_ins.mean(),
            "deletion_ratio_of_medians": median(list(deletion)) / median(list(random_del)),
            "insertion_ratio_of_medians": median(list(insertion)) / median(list(random_ins)),
            "deletion_beats_random": float((deletion < random_del).mean()),
            "insertion_beats_random": float((insertion > random_ins).mean()),
        }
        figures[label] = {
            "deletion_mean": deletion.mean(),
            "insertion_mean": insertion.mean(),
            **ratios,
        }
        print(row.format(label, deletion.mean(), median(list(deletion)), insertion.mean(),
                         median(list(insertion))))  # fmt: skip
        print(
            f"  {'':22} deletion {ratios['deletion_ratio']:.2f}x random (target <= 0.7, "
            f"medians {ratios['deletion_ratio_of_medians']:.2f}x, lower on "
            f"{ratios['deletion_beats_random']:.0%}); insertion {ratios['insertion_ratio']:.2f}x"
            f" (target >= 1.3, medians {ratios['insertion_ratio_of_medians']:.2f}x, higher on "
            f"{ratios['insertion_beats_random']:.0%})"
        )
    return figures


def section_randomisation(
    name: str,
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    targets: np.ndarray,
    prep: dict[str, Any],
    methods: dict[str, ExplainOptions],
) -> dict[str, Any]:
    masks: dict[str, np.ndarray] = {"filled slots": x != 0}
    if kind == "image":
        masks = {"all pixels": np.ones(x.shape, dtype=bool), "ink pixels": x != 0}
    layers = len([m for m in module.modules() if hasattr(m, "reset_parameters")])
    tops: list[int | None] = [*range(1, layers), None]  # the cascade, then all
    figures: dict[str, Any] = {}
    print(f"\n{name}: Spearman rank correlation, trained vs re-initialised model (medians)")
    for method, options in methods.items():
        trained_attr, _ = attributions(module, kind, x, targets, options, prep)
        if kind == "image":  # how much of |attr|'s ranking the input's own pixels give
            rho = rank_correlations(trained_attr, x.astype(np.float32), masks["ink pixels"])
            figures[f"{method}, trained vs the pixel values, ink pixels"] = median_of(rho)
            print(
                f"  {method}: trained |attr| vs the pixel values, ink pixels {median_of(rho):+.3f}"
            )
        for top in tops:
            other, _ = attributions(randomised(module, top), kind, x, targets, options, prep)
            label = "all layers" if top is None else f"top {top} of {layers}"
            for over, mask in masks.items():
                absolute = rank_correlations(trained_attr, other, mask)
                signed = rank_correlations(trained_attr, other, mask, signed=True)
                figures[f"{method}, {label}, {over}"] = {
                    "abs_median": median_of(absolute),
                    "abs_p90": float(np.nanpercentile(absolute, 90)),
                    "signed_median": median_of(signed),
                    "examples": int((~np.isnan(absolute)).sum()),
                }
                print(
                    f"  {method:22} {label:12} {over:12} |attr| {median_of(absolute):+.3f} "
                    f"(p90 {np.nanpercentile(absolute, 90):+.3f})  signed "
                    f"{median_of(signed):+.3f}  ({(~np.isnan(absolute)).sum()} examples)"
                )
            if kind == "image" and options.baseline is None and options.method is None:
                # IG from black is (x - 0) times the path's mean gradient: the model's share
                ink = masks["ink pixels"]
                scale = np.where(ink, x, 1).astype(np.float32)
                rho = median_of(rank_correlations(trained_attr / scale, other / scale, ink))
                figures[f"{method}, {label}, ink pixels, attr / pixel value"] = rho
                print(f"  {method:22} {label:12} |attr / pixel value|, ink pixels {rho:+.3f}")
    print("  target: |attr| median < 0.3")
    return figures


def section_completeness(
    name: str,
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    targets: np.ndarray,
    prep: dict[str, Any],
) -> dict[str, Any]:
    baseline = np.zeros_like(x[:1])  # black; all padding
    figures: dict[str, Any] = {}
    print(f"\n{name}: IG completeness error |sum(attr) - (f(x) - f(baseline))|")
    for steps in STEPS:
        scores, delta = attributions(module, kind, x, targets, ExplainOptions(steps=steps), prep)
        assert delta is not None
        change = np.array(
            [
                probability_of(module, x[i : i + 1], int(t))[0]
                - probability_of(module, baseline, int(t))[0]
                for i, t in enumerate(targets)
            ]
        )
        error = np.abs(scores.reshape(len(x), -1).sum(axis=1) - change)
        p50, p95 = float(np.median(error)), float(np.percentile(error, 95))
        figures[str(steps)] = {
            "median": p50,
            "p95": p95,
            "max": float(error.max()),
            "under_tolerance": float((error < TOLERANCE).mean()),
            "captum_delta_p95": float(np.percentile(np.abs(delta), 95)),
        }
        print(
            f"  {steps:3d} steps: median {p50:.1e}  p95 {p95:.1e}  max {error.max():.1e}  "
            f"< 1e-2 on {(error < TOLERANCE).mean():.0%}  (Captum's delta p95 "
            f"{np.percentile(np.abs(delta), 95):.1e})  {'reaches' if p95 < TOLERANCE else 'misses'}"
            " the target at p95"
        )
    return figures


@contextmanager
def replica(model_dir: Path) -> Iterator[str]:
    """The model served as a replica serves it, on an ephemeral port, in this process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(create_app(model_dir, "digits", 1), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the replica did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def section_latency(
    model_dir: Path, image: np.ndarray, rounds: int, requests: int
) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, *image.shape]}
    infer = orjson.dumps({"inputs": [{**tensor, "data": image.reshape(-1).tolist()}]})

    def explain_body(steps: int, method: str | None = None) -> bytes:
        inputs = [{**tensor, "data": image.reshape(-1).tolist()}]
        parameters: dict[str, Any] = {"steps": steps}
        if method is not None:
            parameters["method"] = method
        return orjson.dumps({"inputs": inputs, "parameters": parameters})

    headers = {"Content-Type": "application/json"}
    print(f"\nlatency through a replica, one digit, {rounds} rounds x {requests} of each")
    per_round: list[dict[str, float]] = []
    with replica(model_dir) as url, httpx.Client(base_url=url, timeout=60) as client:

        def timed(path: str, body: bytes) -> float:
            started = time.perf_counter()
            answer = client.post(path, content=body, headers=headers)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise SystemExit(f"{path}: {answer.status_code} {answer.text[:300]}")
            return elapsed

        bodies = {
            "infer": ("/v2/models/digits/infer", infer),
            "explain": ("/v2/models/digits/explain", explain_body(32)),
            "smoothgrad": ("/v2/models/digits/explain", explain_body(32, "smoothgrad")),
        }
        for _ in range(20):  # warm-up: the explain module is built on first use
            for path, body in bodies.values():
                timed(path, body)
        for r in range(rounds):
            times: dict[str, list[float]] = {kind: [] for kind in bodies}
            for _ in range(requests):  # alternating: each kind sees the same load
                for kind, (path, body) in bodies.items():
                    times[kind].append(timed(path, body))
            figures = {
                f"{kind}_{q}": float(np.percentile(values, pct)) * 1e3
                for kind, values in times.items()
                for q, pct in (("p50", 50), ("p95", 95))
            }
            figures["ratio_p95"] = figures["explain_p95"] / figures["infer_p95"]
            figures["smoothgrad_ratio_p95"] = figures["smoothgrad_p95"] / figures["infer_p95"]
            per_round.append(figures)
            print(
                f"  round {r + 1}: infer p50 {figures['infer_p50']:.2f} p95 "
                f"{figures['infer_p95']:.2f} ms; explain p50 {figures['explain_p50']:.2f} p95 "
                f"{figures['explain_p95']:.2f} ms, ratio {figures['ratio_p95']:.1f}x; smoothgrad "
                f"p50 {figures['smoothgrad_p50']:.2f} p95 {figures['smoothgrad_p95']:.2f} ms, "
                f"ratio {figures['smoothgrad_ratio_p95']:.1f}x"
            )
        # The cost of more steps (5 explanations each, after the rounds).
        by_steps: dict[int, float] = {}
        for steps in (64, 128, 256):
            path, body = "/v2/models/digits/explain", explain_body(steps)
            by_steps[steps] = median([timed(path, body) * 1e3 for _ in range(5)])
    summary = {key: median([f[key] for f in per_round]) for key in per_round[0]}
    print("  explain p50 at " + ", ".join(f"{k} steps {v:.1f} ms" for k, v in by_steps.items()))
    print(
        f"  median over rounds: infer p95 {summary['infer_p95']:.2f} ms, explain p95 "
        f"{summary['explain_p95']:.2f} ms, ratio {summary['ratio_p95']:.1f}x; smoothgrad p95 "
        f"{summary['smoothgrad_p95']:.2f} ms, {summary['smoothgrad_ratio_p95']:.1f}x "
        "(target <= 10x)"
    )
    return {"rounds": per_round, "median": summary, "explain_p50_ms_by_steps": by_steps}


def run_model(
    name: str,
    module: torch.nn.Module,
    kind: str,
    x: np.ndarray,
    prep: dict[str, Any],
    methods: dict[str, ExplainOptions],
    sanity_only: dict[str, ExplainOptions] | None = None,
) -> dict[str, Any]:
    sanity_only = sanity_only or {}
    with torch.no_grad():
        targets = torch.softmax(module(torch.from_numpy(x)).float(), -1).argmax(-1).numpy()
    return {
        "faithfulness": section_faithfulness(name, module, kind, x, targets, prep, methods),
        "randomisation": section_randomisation(
            name, module, kind, x, targets, prep, {**methods, **sanity_only}
        ),
        "completeness": section_completeness(name, module, kind, x, targets, prep),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, not minutes")
    parser.add_argument("--examples", type=int, default=None, help="held-out examples per model")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="of each kind per round")
    parser.add_argument("--text-set", choices=("debian", "intents"), default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    quick = args.quick
    examples = args.examples or (24 if quick else 180)
    rounds = args.rounds or (2 if quick else 5)
    requests = args.requests or (20 if quick else 200)
    text_set = args.text_set or ("intents" if quick else "debian")
    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"load_before": load(), "examples": examples}
    print(f"load before: {figures['load_before']}")
    with tempfile.TemporaryDirectory(prefix="nimbus-explain-bench-") as tmp:
        work = Path(tmp)
        image_data = digit_data()
        cnn_params = {"epochs": 2} if quick else {}
        cnn, cnn_spec, figures["cnn_accuracy"] = trained(
            "cnn", image_data, cnn_params, work / "cnn"
        )
        text_params = {"epochs": 5} if quick else {}
        words = text_data(text_set, quick)
        text, text_spec, figures["text_accuracy"] = trained(
            "text", words, text_params, work / "text"
        )
        image_x = np.ascontiguousarray(image_data.test.x[:examples])
        encoder = TextEncoder.from_preprocessing(text_spec["preprocessing"])
        text_x = encoder.encode(words.test.x[:examples])
        text_x = text_x[(text_x != 0).any(axis=1)]  # a text with no known word has no slots
        figures["cnn"] = run_model(
            "cnn (digits)",
            cnn,
            "image",
            image_x,
            cnn_spec["preprocessing"],
            {
                "integrated gradients": ExplainOptions(steps=32),
                "occlusion 2x2 stride 1": ExplainOptions("occlusion", window=2, stride=1),
                "smoothgrad (25 copies)": ExplainOptions("smoothgrad"),
            },
            {"IG, mean baseline": ExplainOptions(steps=32, baseline="mean")},
        )
        figures["text"] = run_model(
            f"text ({text_set})",
            text,
            "text",
            text_x,
            text_spec["preprocessing"],
            {"integrated gradients": ExplainOptions(steps=32)},
        )
        figures["latency"] = section_latency(work / "cnn" / "model", image_x[0], rounds, requests)
    figures["load_after"] = load()
    print(f"\nload after: {figures['load_after']}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=float))
    return figures


if __name__ == "__main__":
    main()
