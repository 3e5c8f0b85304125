"""``nimbus automl`` against FLAML with the same time budget on scikit-learn's bundled
tabular sets (breast_cancer, wine, digits as 64 features).

For each set and seed the set is uploaded to a real server (its train / val / test split
made by ingest with that seed); Nimbus runs one AutoML job (``--metric balanced_accuracy``,
one CPU) through the platform; FLAML (``flaml[automl]``, the ``bench`` extra) gets the
same train + val rows, the same budget, one job thread, and balanced accuracy as its metric
(its own validation: cross-validation or a holdout, as it chooses). Both are scored on the
same held-out test split: balanced accuracy (Nimbus: the macro recall of the job's
evaluation, which is balanced accuracy; checked here against the model's own predictions
would need serving, so the job's evaluation is read). Also printed: the search's seconds
(first fit to model written) against the budget, and the load average.

    .venv/bin/python bench/automl.py [--budget 60] [--seeds 5] [--sets breast_cancer,wine,digits]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ServerProcess
from sklearn import datasets as bundled
from sklearn.metrics import balanced_accuracy_score

from nimbus.client import Client
from nimbus.client.automl import leaderboard_of
from nimbus.config import Settings

SETS = {
    "breast_cancer": bundled.load_breast_cancer,
    "wine": bundled.load_wine,
    "digits": bundled.load_digits,
}


def write_csv(name: str, path: Path) -> Path:
    bunch = SETS[name]()
    x, y = bunch.data, bunch.target
    lines = [",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])]
    for row, target in zip(x, y, strict=True):
        lines.append(",".join([*(f"{v:.6g}" for v in row), f"c{target}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / f"{split}_x.npy"), np.load(folder / f"{split}_y.npy")


def balanced_loss(
    x_val: Any, y_val: Any, estimator: Any, labels: Any, x_train: Any, y_train: Any, *args: Any
) -> tuple[float, dict[str, float]]:
    """FLAML's custom metric: 1 - balanced accuracy on its validation rows."""
    score = float(balanced_accuracy_score(y_val, estimator.predict(x_val)))
    return 1.0 - score, {"balanced_accuracy": score}


def run_flaml(folder: Path, budget: float, seed: int) -> tuple[float, float, str]:
    from flaml import AutoML

    x_train, y_train = load_split(folder, "train")
    x_val, y_val = load_split(folder, "val")
    x_test, y_test = load_split(folder, "test")
    automl = AutoML()
    began = time.perf_counter()
    automl.fit(
        np.concatenate([x_train, x_val]),
        np.concatenate([y_train, y_val]),
        task="classification",
        metric=balanced_loss,
        time_budget=budget,
        seed=seed,
        n_jobs=1,
        verbose=0,
    )
    took = time.perf_counter() - began
    score = float(balanced_accuracy_score(y_test, automl.predict(x_test)))
    return score, took, str(automl.best_estimator)


def run_nimbus(api: Client, ref: str, budget: float, seed: int) -> tuple[float, float, str]:
    job = api.start_automl(ref, budget, metric="balanced_accuracy", seed=seed, cpus=1)
    job = api.wait_job(job.id, timeout=budget * 4 + 120)
    if job.state != "succeeded" or job.evaluation is None:
        raise RuntimeError(f"job {job.id} {job.state}: {job.exit_reason}")
    board = leaderboard_of(job) or {}
    best = board.get("best") or {}
    return (
        float(job.evaluation["recall_macro"]),
        float(board.get("search_seconds", 0.0)),
        f"{best.get('family')} ({board.get('trials')} trials)",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-", dir=os.environ.get("BENCH_DIR")))
    server = ServerProcess(work / "home", env={"NIMBUS_JOB_ISOLATION": "none"}).start()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with Client(server.url, server.admin_token, settings=Settings(home=work)) as api:
            for name in args.sets.split(","):
                csv = write_csv(name, work / f"{name}.csv")
                scores: dict[str, list[float]] = {"nimbus": [], "flaml": [], "search_s": []}
                for seed in range(args.seeds):
                    dataset = name.replace("_", "-")
                    version = api.upload_dataset(
                        dataset, csv, task="tabular-classification", seed=seed
                    )
                    ref = f"{dataset}:{version.version}"
                    folder = work / f"{dataset}-{version.version}"
                    api.download_dataset(ref, folder)
                    ours, searched, won = run_nimbus(api, ref, args.budget, seed)
                    theirs, took, their_best = run_flaml(folder, args.budget, seed)
                    scores["nimbus"].append(ours)
                    scores["flaml"].append(theirs)
                    scores["search_s"].append(searched)
                    print(
                        f"{name} seed {seed}: nimbus {ours:.4f} ({won}, search {searched:.1f} s)"
                        f"  flaml {theirs:.4f} ({their_best}, {took:.1f} s)"
                        f"  load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                results[name] = scores
    finally:
        server.stop()
    print(f"\nbudget {args.budget:g} s, {args.seeds} seeds; balanced accuracy on the test split")
    print(f"{'set':<14} {'nimbus':>8} {'flaml':>8} {'diff pts':>9} {'search s':>9}")
    for name, s in results.items():
        ours, theirs = statistics.median(s["nimbus"]), statistics.median(s["flaml"])
        print(
            f"{name:<14} {ours:>8.4f} {theirs:>8.4f} {100 * (ours - theirs):>+9.2f} "
            f"{statistics.median(s['search_s']):>9.1f}"
        )
    print(f"load average now: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
