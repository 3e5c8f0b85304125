"""The fairness figures equal fairlearn's (MetricFrame and its disparity functions) on the
same predictions, within 1e-12: three classes, three groups of unequal sizes, one group
lacking a class."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    selection_rate,
)
from sklearn.metrics import accuracy_score, recall_score

from nimbus.errors import InvalidInput
from nimbus.runtime.fairness import fairness

CLASSES = ["cat", "dog", "eel"]
GROUPS = ["north", "south", "west"]


def data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = 500
    groups = rng.choice(3, size=size, p=[0.6, 0.3, 0.1])
    truth = rng.integers(0, 3, size=size)
    truth[(groups == 2) & (truth == 2)] = 0  # the west has no eels
    # A classifier that is right more often in the north.
    right = rng.random(size) < np.where(groups == 0, 0.9, 0.6)
    pred = np.where(right, truth, rng.integers(0, 3, size=size))
    return truth, pred, groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_figures_are_fairlearns(seed: int) -> None:
    truth, pred, groups = data(seed)
    ours = fairness(truth, pred, groups, GROUPS, CLASSES, "region")
    assert ours["group_column"] == "region"
    names = np.array(GROUPS)[groups]
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score},
        y_true=truth,
        y_pred=pred,
        sensitive_features=names,
    )
    for group, row in frame.by_group.iterrows():
        mine = ours["groups"][group]
        assert mine["accuracy"] == pytest.approx(row["accuracy"], abs=1e-12)
        assert mine["count"] == int((names == group).sum())
    for c, name in enumerate(CLASSES):
        t, p = truth == c, pred == c
        per = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "recall": lambda a, b: recall_score(a, b, zero_division=0),
            },
            y_true=t,
            y_pred=p,
            sensitive_features=names,
        )
        for group, row in per.by_group.iterrows():
            mine = ours["groups"][group]
            assert mine["selection_rate"][name] == pytest.approx(row["selection_rate"], abs=1e-12)
            assert mine["recall"][name] == pytest.approx(row["recall"], abs=1e-12)
        got = ours["disparities"][name]
        dpd = demographic_parity_difference(t, p, sensitive_features=names)
        eod = equalized_odds_difference(t, p, sensitive_features=names)
        assert got["demographic_parity_difference"] == pytest.approx(dpd, abs=1e-12)
        assert got["equalized_odds_difference"] == pytest.approx(eod, abs=1e-12)


def test_groups_absent_from_the_data_are_left_out_and_bad_input_refused() -> None:
    truth, pred, groups = data(0)
    north = groups == 0
    ours = fairness(truth[north], pred[north], groups[north], GROUPS, CLASSES, "region")
    assert list(ours["groups"]) == ["north"]
    assert all(d["demographic_parity_difference"] == 0 for d in ours["disparities"].values())
    with pytest.raises(InvalidInput, match="groups must be indices"):
        fairness(truth, pred, groups + 3, GROUPS, CLASSES, "region")
    with pytest.raises(InvalidInput, match="499 groups"):
        fairness(truth, pred, groups[1:], GROUPS, CLASSES, "region")
