"""Scores of a classifier on held-out data, JSON-ready (plain floats, ints and lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from nimbus.errors import InvalidInput


def evaluate(y_true: Any, y_pred: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, per-class figures, confusion matrix.

    ``y_true`` and ``y_pred`` are class indices into ``classes``. Undefined ratios (a class
    never predicted or never present) count as 0. ``confusion_matrix[i][j]`` counts
    examples of class ``i`` predicted as class ``j``; every class gets a row, seen or not.
    """
    truth = np.asarray(y_true).reshape(-1)
    pred = np.asarray(y_pred).reshape(-1)
    if truth.shape != pred.shape:
        raise InvalidInput(f"{truth.size} labels but {pred.size} predictions")
    if truth.size == 0:
        raise InvalidInput("nothing to evaluate: no examples")
    if not classes:
        raise InvalidInput("no classes")
    for name, arr in (("labels", truth), ("predictions", pred)):
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= len(classes):
            raise InvalidInput(f"{name} must be class indices in [0, {len(classes)})")
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=labels, zero_division=0
    )
    result: dict[str, Any] = {
        "accuracy": float(accuracy_score(truth, pred)),
        "support": int(truth.size),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            truth, pred, labels=labels, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(p)
        result[f"recall_{average}"] = float(r)
        result[f"f1_{average}"] = float(f)
    result["per_class"] = {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    result["classes"] = [str(c) for c in classes]
    result["confusion_matrix"] = confusion_matrix(truth, pred, labels=labels).tolist()
    return result
