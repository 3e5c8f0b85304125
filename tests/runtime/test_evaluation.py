from __future__ import annotations

import json

import numpy as np
import pytest

from nimbus.errors import InvalidInput
from nimbus.runtime.evaluation import evaluate


def test_hand_checked_three_class_case() -> None:
    # truth:  a a a b b c      predicted: a a b b c c
    result = evaluate([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = (result["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["support"]) == (0.5, 0.5, 2)
    assert (c["precision"], c["recall"], c["support"]) == (0.5, 1.0, 1)
    assert a["f1"] == pytest.approx(0.8)
    assert c["f1"] == pytest.approx(2 / 3)
    assert result["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert result["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert result["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert result["precision_weighted"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert result["recall_weighted"] == pytest.approx(result["accuracy"])
    assert result["support"] == 6 and result["classes"] == ["a", "b", "c"]


def test_unseen_class_scores_zero_without_warnings() -> None:
    with np.errstate(all="raise"):
        result = evaluate(np.array([0, 0, 1]), np.array([0, 0, 0]), ["x", "y", "z"])
    assert result["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_class"]["z"]["support"] == 0
    assert result["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_result_is_plain_json() -> None:
    result = evaluate(np.array([1, 0], np.int64), np.array([1, 1], np.int32), ["n", "p"])
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) is int for row in result["confusion_matrix"] for v in row)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([], []), ([0, 1], [0]), ([0, 2], [0, 1]), ([0, -1], [0, 0]), ([0.5, 1], [0, 1])],
)
def test_bad_inputs_are_refused(y_true: list[float], y_pred: list[int]) -> None:
    with pytest.raises(InvalidInput):
        evaluate(y_true, y_pred, ["a", "b"])


def test_calibration_hand_checked() -> None:
    # confidence: .95 .85 .70 .60 .50 .92; right: yes no no yes yes yes
    probabilities = [[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5], [0.92, 0.08]]
    truth = [0, 1, 0, 1, 0, 0]
    pred = np.argmax(probabilities, axis=1)
    result = evaluate(truth, pred, ["a", "b"], probabilities)["calibration"]
    bins = result["bins"]
    assert [(b["low"], b["high"]) for b in bins] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 1, 1, 1, 0, 1, 2]
    # an edge belongs to the bin it closes: .7 in (.6, .7], .5 in (.4, .5]
    assert bins[6]["confidence"] == pytest.approx(0.7) and bins[6]["accuracy"] == 0.0
    assert bins[4]["confidence"] == pytest.approx(0.5) and bins[4]["accuracy"] == 1.0
    assert bins[9]["confidence"] == pytest.approx(0.935) and bins[9]["accuracy"] == 1.0
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert result["ece"] == pytest.approx((2 * 0.065 + 0.85 + 0.7 + 0.4 + 0.5) / 6)
    assert json.loads(json.dumps(result)) == result


def test_calibration_is_left_out_without_probabilities_and_checks_them() -> None:
    assert "calibration" not in evaluate([0, 1], [0, 1], ["a", "b"])
    with pytest.raises(InvalidInput, match="one row per example"):
        evaluate([0, 1], [0, 1], ["a", "b"], [[1.0, 0.0]])
    with pytest.raises(InvalidInput, match=r"in \[0, 1\]"):
        evaluate([0, 1], [0, 1], ["a", "b"], [[1.0, 0.0], [2.0, -1.0]])
