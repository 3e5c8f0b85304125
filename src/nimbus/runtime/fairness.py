"""How a classifier fares for each group of a sensitive attribute, and how far apart they are.

Per group: its size, accuracy, and for each class (one against the rest) its selection rate
(the share of the group predicted as that class) and its recall (the share of the group's
examples of that class predicted as it). Per class, the disparities between the groups:

- demographic parity difference: the largest minus the smallest selection rate;
- equalized odds difference: the larger of the true-positive-rate and the
  false-positive-rate differences (largest minus smallest over the groups).

These are fairlearn's ``demographic_parity_difference`` and ``equalized_odds_difference``
(``between_groups``, ``worst_case``) on ``y_true == c`` and ``y_pred == c``; a rate whose
denominator is empty (a group without examples of the class) counts as 0, as there.
JSON-ready (plain floats, ints, dicts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nimbus.errors import InvalidInput
from nimbus.runtime.data import DataSplits


def _rate(hits: np.ndarray, within: np.ndarray) -> float:
    count = int(within.sum())
    return float((hits & within).sum() / count) if count else 0.0


def fairness(
    y_true: Any,
    y_pred: Any,
    groups: Any,
    group_names: Sequence[str],
    classes: Sequence[str],
    column: str,
) -> dict[str, Any]:
    """``y_true``, ``y_pred``: class indices into ``classes``; ``groups``: group indices
    into ``group_names`` (the values of ``column``), one per example. Groups without an
    example in the evaluated data are left out."""
    truth = np.asarray(y_true).reshape(-1)
    pred = np.asarray(y_pred).reshape(-1)
    group = np.asarray(groups).reshape(-1)
    if not truth.shape == pred.shape == group.shape:
        raise InvalidInput(f"{truth.size} labels, {pred.size} predictions, {group.size} groups")
    if group.size and (group.min() < 0 or group.max() >= len(group_names)):
        raise InvalidInput(f"groups must be indices in [0, {len(group_names)})")
    present = [g for g in range(len(group_names)) if (group == g).any()]
    per_group: dict[str, Any] = {}
    tpr: dict[int, list[float]] = {c: [] for c in range(len(classes))}
    fpr: dict[int, list[float]] = {c: [] for c in range(len(classes))}
    selection: dict[int, list[float]] = {c: [] for c in range(len(classes))}
    for g in present:
        member = group == g
        rates, recalls = {}, {}
        for c, name in enumerate(classes):
            chosen, actual = pred == c, truth == c
            rates[str(name)] = _rate(chosen, member)
            recalls[str(name)] = _rate(chosen, member & actual)
            selection[c].append(rates[str(name)])
            tpr[c].append(recalls[str(name)])
            fpr[c].append(_rate(chosen, member & ~actual))
        per_group[str(group_names[g])] = {
            "count": int(member.sum()),
            "accuracy": _rate(pred == truth, member),
            "selection_rate": rates,
            "recall": recalls,
        }

    def spread(values: list[float]) -> float:
        return float(max(values) - min(values)) if values else 0.0

    disparities = {
        str(name): {
            "demographic_parity_difference": spread(selection[c]),
            "equalized_odds_difference": max(spread(tpr[c]), spread(fpr[c])),
        }
        for c, name in enumerate(classes)
    }
    return {"group_column": column, "groups": per_group, "disparities": disparities}


def with_fairness(evaluation: dict[str, Any], data: DataSplits, y_pred: Any) -> dict[str, Any]:
    """``evaluation`` (of the test split) with its ``fairness`` block when the dataset
    version has a group column."""
    if data.groups is None:
        return evaluation
    found = fairness(
        data.test.y, y_pred, data.groups.test, data.groups.names, data.classes, data.groups.column
    )
    return {**evaluation, "fairness": found}
