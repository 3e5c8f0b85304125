"""The AutoML search in-process (runtime/automl.py) on a tiny generated tabular set: the
budget kept, the leaderboard, the winner's model directory; each scikit-learn family's ONNX
export against its ``predict_proba``; the parameters' validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from nimbus.errors import InvalidInput
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE
from nimbus.modelformat.verify import check_model_dir
from nimbus.runtime import automl
from nimbus.runtime.automl import METRICS, cv_folds, cv_repeats, search, with_validation
from nimbus.runtime.automl_families import SKLEARN_ARCHITECTURES, families_for, fit
from nimbus.runtime.automl_search import Trial, chosen
from nimbus.runtime.custom import evaluate_model_dir
from nimbus.runtime.data import DataSplits, Split
from nimbus.runtime.hyperparams import validate_automl_params
from tests.runtime.synthetic import digits, tabular, text

BUDGET = 4.0


def test_a_search_keeps_its_budget_and_writes_the_best_model(tmp_path: Path) -> None:
    data = tabular(600)  # 3 classes, 5 features on wild scales, 5% missing values
    seen: list[tuple[int, Trial, Trial]] = []
    found = search(
        data,
        {"budget": BUDGET, "metric": "macro_f1", "seed": 1},
        tmp_path / "model",
        on_trial=lambda n, trial, best: seen.append((n, trial, best)),
    )
    assert 0.6 * BUDGET <= found.search_seconds <= 1.1 * BUDGET, found.search_seconds
    assert [n for n, _, _ in seen] == list(range(1, len(found.trials) + 1))
    families = {t.family for t in found.trials}  # the mlp's 5 folds may not fit in 4 s
    assert families >= {"logistic_regression", "random_forest", "gradient_boosting"}
    summary = found.summary()
    assert summary["validation"] == "5-fold cross-validation on train + val"
    rows = summary["leaderboard"]
    assert summary["trials"] == len(rows) == len(found.trials) >= 8
    assert rows[0]["score"] == pytest.approx(
        max(t.score for t in found.trials if t.score is not None), abs=1e-6
    )
    # the winner: the lowest log loss within a standard error of the best score
    assert found.best is chosen(found.trials) and summary["best"] in rows
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready
    assert found.summary(top=3)["leaderboard"] == rows[:3]
    # the winner is a model directory the registry accepts, scored on the test split
    spec = check_model_dir(tmp_path / "model")
    architecture = {"mlp": "mlp", **SKLEARN_ARCHITECTURES}[found.best.family]
    assert spec["architecture"] == architecture
    assert evaluate_model_dir(tmp_path / "model", data)["accuracy"] > 0.9


@pytest.mark.parametrize("task", ["image", "text"])
def test_images_and_text_search_variants_of_their_built_ins(task: str, tmp_path: Path) -> None:
    data = digits(240) if task == "image" else text(180)
    found = search(data, {"budget": 3.0, "metric": "accuracy", "seed": 0}, tmp_path)
    assert found.search_seconds <= 3.3
    assert {t.family for t in found.trials} == {"cnn" if task == "image" else "text"}
    assert len({json.dumps(dict(t.config)) for t in found.trials}) == len(found.trials) >= 2
    assert check_model_dir(tmp_path)["architecture"] == found.best.family


@pytest.mark.parametrize("family", sorted(SKLEARN_ARCHITECTURES))
def test_scikit_learn_models_export_to_onnx_that_matches_predict_proba(
    family: str, tmp_path: Path
) -> None:
    data = tabular(300)
    family_of = {f.name: f for f in families_for(data.task, len(data.train), 5)}
    grid = family_of[family].grid
    config = {key: values[len(values) // 2] for key, values in grid.items()}
    fitted = fit(family, config, data, seed=0, threads=1)
    fitted.export(data, tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    assert spec["architecture"] == SKLEARN_ARCHITECTURES[family]
    assert spec["onnx_input"] == {"name": "input", "datatype": "FP32", "shape": [-1, 5]}
    session = ort.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    x = np.asarray(data.test.x, dtype=np.float32)
    assert np.isnan(x).any()  # missing values are imputed inside the graph, as in training
    (got,) = session.run(["probabilities"], {"input": x})
    assert got.dtype == np.float32 and got.shape == (len(x), 3)
    assert np.allclose(got, fitted.probabilities(data, "test"), atol=1e-4)
    check_model_dir(tmp_path)


@pytest.mark.parametrize("shrinkage", ["none", "auto"])
def test_a_linear_discriminant_of_two_classes_exports_its_own_probabilities(
    shrinkage: str, tmp_path: Path
) -> None:
    # skl2onnx's converter gives the logistic of twice the decision for two classes
    three = tabular(300)
    train, val, test = (
        Split(s.x[s.y < 2], s.y[s.y < 2]) for s in (three.train, three.val, three.test)
    )
    two = DataSplits(three.task, ["x", "y"], train, val, test, three.features)
    fitted = fit("linear_discriminant", {"shrinkage": shrinkage}, two, seed=0, threads=1)
    fitted.export(two, tmp_path)
    session = ort.InferenceSession(str(tmp_path / ONNX_FILE), providers=["CPUExecutionProvider"])
    x = np.asarray(two.test.x, dtype=np.float32)
    (got,) = session.run(["probabilities"], {"input": x})
    want = fitted.probabilities(two, "test")
    uncertain = (want.min(axis=1) > 1e-3).sum()  # rows where the two formulas differ
    assert got.shape == (len(x), 2) and uncertain >= 3, uncertain
    assert np.allclose(got, want, atol=1e-4)


def test_small_tabular_sets_are_cross_validated_in_stratified_folds() -> None:
    data = tabular(600)  # 525 train + val rows: one round of 5 folds
    folds = cv_folds(data, seed=0)
    assert len(folds) == 5
    rows = len(data.train) + len(data.val)
    assert sum(len(f.test) for f in folds) == rows  # each row held out once
    for f in folds:  # a fold's early-stopping share comes out of its training rows
        assert len(f.train) + len(f.val) + len(f.test) == rows
        assert len(f.val) == pytest.approx(0.15 * (rows - len(f.test)), abs=1)
        assert not set(map(tuple, f.test.x.tolist())) & set(map(tuple, f.val.x.tolist()))
    held_out = np.concatenate([f.test.x for f in folds])
    assert np.isnan(held_out).sum() == np.isnan(np.concatenate([data.train.x, data.val.x])).sum()
    assert cv_folds(digits(100), seed=0) == []  # images: the val split
    few = DataSplits(
        data.task,
        data.classes,
        Split(data.train.x[:3], np.array([0, 1, 2])),
        Split(data.val.x[:1], np.array([0])),
        data.test,
    )
    assert cv_folds(few, seed=0) == []  # a class with one example: no stratified folds


def test_a_smaller_set_is_cross_validated_in_reshuffled_rounds() -> None:
    data = tabular(200)  # 175 train + val rows: 3 rounds (500 held-out predictions at most)
    rows = len(data.train) + len(data.val)
    assert (cv_repeats(rows), cv_repeats(250), cv_repeats(499), cv_repeats(500)) == (3, 2, 2, 1)
    folds = cv_folds(data, seed=0)
    assert len(folds) == 15
    held = []
    for r in range(3):  # each round holds out every row once
        round_ = np.concatenate([f.test.x for f in folds[5 * r : 5 * r + 5]])
        assert len(round_) == rows
        held.append(np.sort(np.nan_to_num(round_), axis=0))
        assert all(len(f.train) + len(f.val) + len(f.test) == rows for f in folds[5 * r :])
    assert np.array_equal(held[0], held[1]) and np.array_equal(held[1], held[2])
    firsts = [folds[5 * r].test.x for r in range(3)]  # but the rounds are reshuffled
    assert not np.array_equal(firsts[0], firsts[1]) and not np.array_equal(firsts[1], firsts[2])
    again = cv_folds(data, seed=0)  # and seeded
    assert all(np.array_equal(a.test.y, b.test.y) for a, b in zip(folds, again, strict=True))


def test_the_final_fit_is_estimated_from_one_fold_of_its_trial() -> None:
    trial = Trial("random_forest", {}, 15.0, 0.9)
    # 15 fits of 4/5 of the rows (3 rounds of 5): one fit on all of them, 1.25 s a fit
    assert automl.final_fit_seconds(trial, (100, 20), 15, repeats=3) == pytest.approx(
        1.25 * automl.REFIT_MARGIN
    )
    assert automl.final_fit_seconds(trial, (100, 20), 5) == pytest.approx(
        3.75 * automl.REFIT_MARGIN
    )


def test_a_search_on_a_small_set_reports_its_rounds(tmp_path: Path) -> None:
    found = search(
        tabular(200), {"budget": 3.0, "metric": "accuracy", "seed": 0}, tmp_path / "model"
    )
    assert found.search_seconds <= 3.3
    assert found.summary()["validation"] == "3 rounds of 5-fold cross-validation on train + val"
    check_model_dir(tmp_path / "model")


def test_a_trial_starts_no_fold_that_would_end_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tabular(400)
    folds = cv_folds(data, seed=0)
    now = [0.0]

    def one_second_fit(*args: Any, **kwargs: Any) -> Any:
        now[0] += 1.0  # each fold's fit takes a second of the fake clock
        return fit(*args, **kwargs)

    monkeypatch.setattr(automl, "fit", one_second_fit)
    ends: list[float] = []

    def stop(upcoming: float) -> bool:
        ends.append(now[0])
        return now[0] + upcoming >= 3.5

    fitted, score, loss, spread = automl._try(
        "logistic_regression",
        {"C": 1.0},
        data,
        folds,
        "accuracy",
        seed=0,
        threads=1,
        stop=stop,
        clock=lambda: now[0],
    )
    assert fitted is not None and score is not None and loss is not None and loss > 0
    assert spread is not None and spread >= 0  # over the 3 folds it had
    assert ends == [1.0, 2.0, 3.0]  # a fourth fold would have ended at 4 s, past 3.5 s


def test_a_dataset_without_a_val_split_lends_a_fifth_of_its_train_split() -> None:
    data = tabular(400)
    bare = DataSplits(
        data.task, data.classes, data.train, Split(data.val.x[:0], data.val.y[:0]), data.test
    )
    lent = with_validation(bare, seed=0)
    assert len(lent.val) == round(0.2 * len(data.train))
    assert len(lent.train) + len(lent.val) == len(data.train)
    assert with_validation(data, seed=0) is data


def test_a_budget_too_small_for_any_fit_fails_with_a_clear_reason(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no model could be fitted within the budget"):
        search(tabular(200), {"budget": 0.01, "metric": "accuracy", "seed": 0}, tmp_path)


def test_automl_params_are_checked_naming_the_key() -> None:
    assert validate_automl_params({"budget": "10m"}) == {
        "budget": 600.0,
        "metric": "accuracy",
        "seed": 0,
    }
    assert validate_automl_params({"budget": 90, "metric": "Balanced-Accuracy"})["metric"] == (
        "balanced_accuracy"
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"budget": "0s"}, "budget"),
        ({"budget": "-3"}, "budget"),
        ({"budget": "soon"}, "budget"),
        ({"budget": True}, "budget"),
        ({"budget": "30d"}, "budget"),
        ({"metric": "auc"}, "metric"),
        ({"epochs": 3}, "epochs"),
        ({"register": "Bad Name"}, "register"),
        ({"register": 7}, "register"),
    ]
    for raw, key in cases:
        with pytest.raises(InvalidInput, match=f"'{key}'"):
            validate_automl_params(raw)
    assert set(METRICS) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert validate_automl_params({"register": "cancer-auto"})["register"] == "cancer-auto"


def board_row(trial: int, family: str, score: float) -> dict[str, Any]:
    return {"trial": trial, "family": family, "params": {}, "score": score, "fit_seconds": 0.1}


# A leaderboard whose model is not its top score (chosen within a standard error, by loss).
BOARD = {
    "trials": 2,
    "search_seconds": 3.2,
    "budget_seconds": 4,
    "metric": "accuracy",
    "validation": "5-fold cross-validation on train + val",
    "leaderboard": [board_row(1, "random_forest", 0.97), board_row(2, "svm", 0.96)],
    "best": board_row(2, "svm", 0.96),
    "chosen_by": automl.WINNER_RULE,
}


def test_the_leaderboard_marks_the_model_when_it_is_not_the_top_score() -> None:
    lines = automl.leaderboard_text(BOARD).splitlines()
    assert lines[2].startswith("   1  ") and "random_forest" in lines[2]
    assert lines[3].startswith("   2* ") and "svm" in lines[3]
    assert lines[-1] == f"* the model: trial 2, {automl.WINNER_RULE}"
