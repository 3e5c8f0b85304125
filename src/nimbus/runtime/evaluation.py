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

CALIBRATION_BINS = 10


def evaluate(
    y_true: Any, y_pred: Any, classes: Sequence[str], probabilities: Any = None
) -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, per-class figures, confusion matrix,
    and, given the predicted ``probabilities`` (``[N, classes]``), their calibration.

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
    if probabilities is not None:
        result["calibration"] = calibration(truth, probabilities)
    return result


def calibration(y_true: Any, probabilities: Any, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error and the reliability table of ``probabilities`` (one row
    of class probabilities per example) against the labels (Guo et al., 2017).

    An example's confidence is its highest probability and it counts as right when that
    class is its label. Bins are ``bins`` equal-width intervals ``(low, high]`` of
    confidence (the first also holds 0); each reports its examples' count, mean confidence
    and accuracy (both null when it is empty). The ECE is the count-weighted mean of
    ``|accuracy - confidence|`` over the bins.
    """
    truth = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != truth.size or probs.shape[1] == 0:
        raise InvalidInput(
            f"probabilities must be one row per example ({truth.size}), not shape {probs.shape}"
        )
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise InvalidInput("probabilities must be finite numbers in [0, 1]")
    confidence = np.minimum(probs.max(axis=1), 1.0)
    correct = probs.argmax(axis=1) == truth
    edges = np.arange(bins + 1) / bins  # 3 / 10 is 0.3, as printed
    # side="left": a confidence equal to an edge belongs to the bin that edge closes.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(correct[inside].mean()) if count else None
        if conf is not None and acc is not None:
            ece += count / truth.size * abs(acc - conf)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"ece": float(ece), "bins": table}
