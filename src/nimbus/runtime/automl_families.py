"""The model families an AutoML job searches, per task, and how one configuration is fitted.

Tabular data: the built-in ``mlp`` and six scikit-learn classifiers (gradient boosting,
random forest, extra trees, logistic regression on standardised features, an RBF support
vector machine with sigmoid-calibrated probabilities, linear discriminant analysis),
exported with skl2onnx.
Images: variants of the built-in ``cnn``; text: variants of the built-in ``text`` model.
Every grid is ordered cheap to expensive, starting from a cheap point
(:mod:`nimbus.runtime.automl_search`). The torch families train with the built-ins' own
trainer (its early stopping on the validation split included).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from nimbus.datasets.domain import Task
from nimbus.modelformat.export import export_model
from nimbus.runtime.automl_search import Family
from nimbus.runtime.builtins import PREPARERS
from nimbus.runtime.data import DataSplits, Split
from nimbus.runtime.sklearn_onnx import export_sklearn, sklearn_spec
from nimbus.runtime.trainer import TrainResult, train

EVAL_BATCH = 512
# The grid of both tree ensembles (random forest, extra trees): one fit builds either
FOREST_GRID: dict[str, tuple[Any, ...]] = {
    "n_estimators": (16, 32, 64, 128, 256),
    "max_features": (0.15, 0.3, 0.6, 1.0),
    "min_samples_leaf": (1, 2, 4, 8),
    "class_weight": ("none", "balanced"),
}
SKLEARN_ARCHITECTURES = {
    "gradient_boosting": "sklearn-gradient-boosting",
    "random_forest": "sklearn-random-forest",
    "extra_trees": "sklearn-extra-trees",
    "svm": "sklearn-svm",
    "logistic_regression": "sklearn-logistic-regression",
    "linear_discriminant": "sklearn-linear-discriminant",
}


def families_for(task: Task, rows: int, features: int = 1, repeats: int = 1) -> list[Family]:
    """The families that fit ``task``, their priors scaled to ``rows`` train examples (of
    ``features`` columns for tabular data) and ``repeats`` fits a trial (its folds)."""
    return [
        dataclasses.replace(f, prior_seconds=f.prior_seconds * repeats)
        for f in _families(task, max(rows, 1) / 1000, features)
    ]


def _families(task: Task, size: float, features: int) -> list[Family]:
    if task is Task.TABULAR:
        width = max(features, 1) / 30
        return [
            Family(
                "logistic_regression",
                {"C": (0.01, 0.1, 1.0, 10.0, 100.0), "class_weight": ("none", "balanced")},
                start={"C": 2},
                prior_seconds=0.02 + 0.02 * size * width,
            ),
            Family(
                # shared covariance, Gaussian classes: on a small set (wine: 160 rows) it
                # generalises better than the searched ensembles (see docs/automl.md)
                "linear_discriminant",
                {"shrinkage": ("none", "auto", 0.01, 0.1, 0.3)},
                prior_seconds=0.01 + 0.01 * size * width,
            ),
            Family(
                "random_forest",
                FOREST_GRID,
                start={"max_features": 1},
                cost_keys=("n_estimators", "max_features"),
                prior_seconds=0.05 + 0.1 * size * width,
            ),
            Family(
                "extra_trees",
                FOREST_GRID,
                start={"max_features": 1},
                cost_keys=("n_estimators", "max_features"),
                prior_seconds=0.05 + 0.06 * size * width,
            ),
            Family(
                "svm",
                {
                    "C": (0.1, 1.0, 10.0, 100.0),
                    "scaling": ("standard", "none"),
                    "class_weight": ("none", "balanced"),
                },
                start={"C": 2},
                prior_seconds=0.05 + 0.5 * size * size * width,
            ),
            Family(
                "gradient_boosting",
                {
                    "n_estimators": (16, 32, 64, 128, 256),
                    "learning_rate": (0.03, 0.1, 0.3),
                    "max_depth": (2, 3, 5),
                    "subsample": (0.5, 0.8, 1.0),
                },
                start={"learning_rate": 1, "max_depth": 1, "subsample": 1},
                cost_keys=("n_estimators", "max_depth", "subsample"),
                prior_seconds=0.1 + 0.4 * size * width,
            ),
            Family(
                "mlp",
                {
                    "epochs": (15, 30, 60, 120),
                    "hidden": ("64", "128,64", "256,128"),
                    "lr": (0.0003, 0.001, 0.003, 0.01),
                    "dropout": (0.0, 0.1, 0.3),
                    "weight_decay": (0.0, 0.0001, 0.001),
                },
                start={"hidden": 1, "lr": 2, "dropout": 1},
                cost_keys=("epochs",),
                prior_seconds=0.3 + 1.0 * size,
            ),
        ]
    if task is Task.IMAGE:
        return [
            Family(
                "cnn",
                {
                    "epochs": (2, 4, 8, 16),
                    "conv_channels": (8, 16, 32, 64),
                    "hidden": (32, 64, 128, 256),
                    "lr": (0.0003, 0.001, 0.003),
                },
                start={"conv_channels": 1, "hidden": 1, "lr": 1},
                cost_keys=("epochs", "conv_channels"),
                prior_seconds=1.0 + 4.0 * size,
            )
        ]
    return [
        Family(
            "text",
            {
                "epochs": (5, 10, 20, 40),
                "embed_dim": (16, 32, 64),
                "ngrams": (1, 2),
                "lr": (0.01, 0.03, 0.1),
            },
            start={"ngrams": 1, "lr": 1},
            cost_keys=("epochs", "ngrams"),
            prior_seconds=0.5 + 1.0 * size,
        )
    ]


def warm_up() -> None:
    """Pay the one-time costs of a first fit before the search's clock starts: torch's
    deterministic mode (which the trainer turns on) imports its compiler stack on first use,
    seconds on a busy machine. Changes no setting."""
    torch.use_deterministic_algorithms(
        torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
    )


class Fitted(Protocol):
    """A fitted configuration: its probabilities on a split, and its model directory."""

    def probabilities(self, data: DataSplits, split: str) -> np.ndarray: ...

    def export(self, data: DataSplits, out_dir: Path) -> None: ...


def fit(
    family: str,
    config: dict[str, Any],
    data: DataSplits,
    *,
    seed: int,
    threads: int,
    with_val: bool = False,
) -> Fitted:
    """Fit ``family`` with ``config`` on ``data``'s train split (the torch families also
    watch its val split to stop early; with ``with_val`` the scikit-learn ones train on
    train and val together); nothing is read from the test split."""
    if family in SKLEARN_ARCHITECTURES:
        rows = _train_and_val(data) if with_val else data.train
        return _fit_sklearn(family, config, rows, seed=seed, threads=threads)
    return _fit_builtin(family, config, data, seed)


def _train_and_val(data: DataSplits) -> Split:
    return Split(
        np.concatenate([np.asarray(data.train.x), np.asarray(data.val.x)]),
        np.concatenate([np.asarray(data.train.y), np.asarray(data.val.y)]),
    )


@dataclass
class SklearnFitted:
    family: str
    config: dict[str, Any]
    estimator: Any

    def probabilities(self, data: DataSplits, split: str) -> np.ndarray:
        x = np.asarray(getattr(data, split).x, dtype=np.float32)
        return np.asarray(self.estimator.predict_proba(x))

    def export(self, data: DataSplits, out_dir: Path) -> None:
        n_features = int(data.train.x.shape[1])
        spec = sklearn_spec(
            SKLEARN_ARCHITECTURES[self.family],
            dict(self.config),
            data.classes,
            data.features or [f"f{i}" for i in range(n_features)],
        )
        split = data.val if len(data.val) else data.train
        export_sklearn(self.estimator, spec, np.asarray(split.x[:64]), out_dir)


def _estimator(family: str, config: dict[str, Any], seed: int, threads: int) -> Any:
    # Missing values (NaN) become the train split's mean, inside the exported graph too
    # (the mlp's standardisation does the same).
    imputer = SimpleImputer(strategy="mean", keep_empty_features=True)
    weight = None if config.get("class_weight") == "none" else config.get("class_weight")
    if family == "logistic_regression":
        return make_pipeline(
            imputer,
            StandardScaler(),
            LogisticRegression(C=config["C"], class_weight=weight, max_iter=2000),
        )
    if family == "svm":
        # SVC's own probability=True is deprecated (scikit-learn 1.9): its Platt scaling is
        # this calibration, fitted on 3 internal folds, one SVC kept for the export.
        svm = SVC(C=config["C"], gamma="scale", class_weight=weight, random_state=seed)
        calibrated = CalibratedClassifierCV(svm, method="sigmoid", cv=3, ensemble=False)
        if config["scaling"] == "standard":
            return make_pipeline(imputer, StandardScaler(), calibrated)
        return make_pipeline(imputer, calibrated)
    if family == "linear_discriminant":
        # SVD without shrinkage; least squares with it, towards the identity: on
        # standardised features, so that no feature's scale decides it
        shrinkage = config["shrinkage"]
        lda = (
            LinearDiscriminantAnalysis()
            if shrinkage == "none"
            else LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)
        )
        return make_pipeline(imputer, StandardScaler(), lda)
    if family in ("random_forest", "extra_trees"):
        forest = RandomForestClassifier if family == "random_forest" else ExtraTreesClassifier
        return make_pipeline(
            imputer,
            forest(
                n_estimators=config["n_estimators"],
                max_features=config["max_features"],
                min_samples_leaf=config["min_samples_leaf"],
                class_weight=weight,
                random_state=seed,
                n_jobs=threads,
            ),
        )
    return make_pipeline(
        imputer,
        GradientBoostingClassifier(
            n_estimators=config["n_estimators"],
            learning_rate=config["learning_rate"],
            max_depth=config["max_depth"],
            subsample=config["subsample"],
            random_state=seed,
        ),
    )


def _fit_sklearn(
    family: str, config: dict[str, Any], train: Split, *, seed: int, threads: int
) -> SklearnFitted:
    estimator = _estimator(family, config, seed, threads)
    estimator.fit(np.asarray(train.x, dtype=np.float32), np.asarray(train.y))
    return SklearnFitted(family, dict(config), estimator)


def refit(fitted: Fitted, data: DataSplits, *, seed: int, threads: int) -> Fitted:
    """A scikit-learn configuration fitted again on train and val together (the torch
    models keep their weights: their early stopping used the val split)."""
    if not isinstance(fitted, SklearnFitted) or not len(data.val):
        return fitted
    return _fit_sklearn(
        fitted.family, fitted.config, _train_and_val(data), seed=seed, threads=threads
    )


class _Quiet:
    """The trainer's reporter for a candidate: the job's own metrics are the search's."""

    def log(self, step: int, **metrics: float) -> None:
        pass

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None


@dataclass
class BuiltinFitted:
    family: str
    params: dict[str, Any]
    result: TrainResult

    def probabilities(self, data: DataSplits, split: str) -> np.ndarray:
        prepared = PREPARERS[self.family](data, self.result.params)
        rows = np.arange(len(getattr(data, split)))
        model = self.result.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), EVAL_BATCH):
                logits = model(prepared.batch(split, rows[i : i + EVAL_BATCH]))
                out.append(torch.softmax(logits.float(), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(data.classes)), np.float32)

    def export(self, data: DataSplits, out_dir: Path) -> None:
        r = self.result
        export_model(r.model, r.spec, r.example_input, out_dir)


def _fit_builtin(family: str, config: dict[str, Any], data: DataSplits, seed: int) -> BuiltinFitted:
    no_test = DataSplits(
        data.task,
        data.classes,
        data.train,
        data.val,
        Split(data.test.x[:0], data.test.y[:0]),
        data.features,
        data.image_transform,
    )
    params = {**config, "seed": seed}
    return BuiltinFitted(family, params, train(family, no_test, params, _Quiet()))
