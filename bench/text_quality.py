"""Quality of the built-in models against scikit-learn on real data: prints figures,
asserts nothing.

1. Text: two real sets collected from this machine (bench/text_corpora.py: Debian package
   descriptions by archive section, man pages by section). Each is uploaded to a real
   server; the ``text`` model is trained as a Nimbus job with its defaults, and with the
   seed's defaults (``SEED_TEXT``: words only, the seed's tokenizer, 5 epochs at lr 1e-3),
   interleaved, over several seeds. The baseline is TF-IDF (1-2-grams) + logistic
   regression fitted on the very train split the jobs trained on (downloaded from the
   server) and scored on the same test split: scikit-learn's defaults (C=1), and C chosen
   on the val split from 0.1, 1, 10, 100 (the jobs use the val split too, to stop).
   Targets: default ``text`` >= 0.95x TF-IDF+LR, job time <= 2x the seed's defaults.
2. Tabular: the ``mlp`` defaults against HistGradientBoostingClassifier (defaults, fitted
   on the train split) on scikit-learn's breast_cancer and wine, several upload seeds (so
   several splits); target >= 0.97x.

Job time is the server's started_at -> finished_at of each job (load, train, score,
export, upload); the figure is the median over the seeds. Accuracies are means over seeds.

Run: .venv/bin/python bench/text_quality.py [--seeds 3] [--skip text,tabular]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import text_corpora
from _common import ServerProcess, median
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.runtime.api import load_local_dataset
from nimbus.runtime.data import DataSplits

SEED_TEXT = {
    "ngrams": 1,
    "tokenizer": "alnum",
    "max_len": 64,
    "embed_dim": 64,
    "min_freq": 1,
    "epochs": 5,
    "lr": 0.001,
    "batch_size": 64,
    "patience": 0,
}
C_GRID = (0.1, 1.0, 10.0, 100.0)


def tfidf_lr(data: DataSplits) -> tuple[float, float, float, float]:
    """Test accuracy at C=1 and at the val-chosen C, that C, and the seconds of one fit."""
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    train_x = vectorizer.fit_transform([str(t) for t in data.train.x])
    val_x = vectorizer.transform([str(t) for t in data.val.x])
    test_x = vectorizer.transform([str(t) for t in data.test.x])
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(train_x, data.train.y) for c in C_GRID}
    seconds = (time.perf_counter() - start) / len(C_GRID)
    best_c = max(C_GRID, key=lambda c: (fits[c].score(val_x, data.val.y), -c))
    default = float(fits[1.0].score(test_x, data.test.y))
    return default, float(fits[best_c].score(test_x, data.test.y)), best_c, seconds


def run_job(api: Client, ref: str, model: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    job = api.wait_job(api.submit_job(ref, model, params=params, seed=seed).id, timeout=3600)
    if job.state != "succeeded" or not job.evaluation:
        raise SystemExit(f"job {job.id} ({model} {params}) ended {job.state}: {job.exit_reason}")
    assert job.started_at is not None and job.finished_at is not None
    best = api.job_metrics(job.id).get("best_epoch") or []
    return {
        "accuracy": float(job.evaluation["accuracy"]),
        "seconds": (job.finished_at - job.started_at).total_seconds(),
        "best_epoch": int(best[-1].value or 0) if best else None,
    }


def upload(api: Client, name: str, path: Path, work: Path, seed: int) -> tuple[str, DataSplits]:
    version = api.upload_dataset(name, path, seed=seed)
    ref = f"{version.dataset}:{version.version}"
    directory = work / f"{name}-{version.version}"
    api.download_dataset(ref, directory)
    return ref, load_local_dataset(directory)


def text_sets(api: Client, work: Path, seeds: int) -> list[str]:
    rows = []
    corpora = {
        "debian": text_corpora.debian_descriptions,
        "man": text_corpora.man_pages,
    }
    for name, collect in corpora.items():
        texts = collect()
        path = text_corpora.write_csv(texts, work / f"{name}.csv")
        ref, data = upload(api, f"text-{name}", path, work, seed=0)
        default_lr, tuned_lr, best_c, lr_seconds = tfidf_lr(data)
        runs: dict[str, list[dict[str, Any]]] = {"seed": [], "default": []}
        for seed in range(seeds):  # interleaved, so drift in the machine's load hits both
            runs["seed"].append(run_job(api, ref, "text", SEED_TEXT, seed))
            runs["default"].append(run_job(api, ref, "text", {}, seed))
        acc = {k: statistics.mean(r["accuracy"] for r in v) for k, v in runs.items()}
        secs = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
        epochs = [r["best_epoch"] for r in runs["default"]]
        rows.append(
            f"{name:8} {len(texts):5} {len(data.classes):2} {len(data.test):5} | "
            f"{default_lr:.3f} {tuned_lr:.3f} (C={best_c:g}) {lr_seconds:5.1f}s | "
            f"{acc['seed']:.3f} {secs['seed']:5.1f}s | "
            f"{acc['default']:.3f} {secs['default']:5.1f}s "
            f"best epochs {epochs} | {acc['default'] / default_lr:.3f} "
            f"{acc['default'] / tuned_lr:.3f} | {secs['default'] / secs['seed']:.2f}x"
        )
        print(rows[-1], flush=True)
    return rows


def write_tabular(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "label"])
        writer.writerows([*map(float, row), int(label)] for row, label in zip(x, y, strict=True))
    return path


def tabular_sets(api: Client, work: Path, seeds: int) -> list[str]:
    rows = []
    for name, loader in (("breast_cancer", load_breast_cancer), ("wine", load_wine)):
        x, y = loader(return_X_y=True)
        path = write_tabular(x, y, work / f"{name}.csv")
        hgb, mlp, seconds = [], [], []
        for seed in range(seeds):
            ref, data = upload(api, name.replace("_", "-"), path, work, seed=seed)
            model = HistGradientBoostingClassifier(random_state=0)
            model.fit(np.asarray(data.train.x), np.asarray(data.train.y))
            hgb.append(float(model.score(np.asarray(data.test.x), np.asarray(data.test.y))))
            job = run_job(api, ref, "mlp", {}, seed)
            mlp.append(job["accuracy"])
            seconds.append(job["seconds"])
        h, m = statistics.mean(hgb), statistics.mean(mlp)
        rows.append(
            f"{name:14} {len(y):4} rows, {seeds} splits: HGB {h:.3f}  mlp {m:.3f} "
            f"(job {median(seconds):.1f}s)  ratio {m / h:.3f}"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: text,tabular")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-", dir=os.environ.get("BENCH_DIR")))
    server = ServerProcess(work / "home").start()
    try:
        with Client(server.url, server.admin_token, settings=Settings(home=work)) as api:
            if "text" not in skip:
                print(
                    "text: set, rows, classes, test rows | TF-IDF+LR test acc at C=1, at the "
                    "val-chosen C, s/fit | seed defaults acc, job s | new defaults acc, job s | "
                    "ratio to C=1, to tuned C | time vs seed"
                )
                text_sets(api, work, args.seeds)
            if "tabular" not in skip:
                print("tabular: mlp defaults vs HistGradientBoostingClassifier (test accuracy)")
                tabular_sets(api, work, args.seeds)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
