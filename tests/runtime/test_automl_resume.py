"""A retried AutoML search carries on from its checkpoint (runtime/automl.py): the trials
of the earlier attempt kept, the budget counted in wall time across attempts, the earlier
winner fitted again when no later trial beats it; a state of another search is ignored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nimbus.modelformat.verify import check_model_dir
from nimbus.runtime.automl import checkpoint_state, restore, search
from nimbus.runtime.automl_families import families_for
from nimbus.runtime.automl_search import Trial
from nimbus.runtime.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes
from tests.runtime.synthetic import tabular

BUDGET = 3.0
PARAMS: dict[str, Any] = {"budget": BUDGET, "metric": "accuracy", "seed": 2}


def test_a_resumed_search_keeps_the_earlier_trials_and_the_budget_left(tmp_path: Path) -> None:
    data = tabular(400)
    states: list[tuple[int, dict[str, Any]]] = []
    first = search(
        data, PARAMS, tmp_path / "first", on_checkpoint=lambda n, s: states.append((n, s))
    )
    assert [n for n, _ in states] == list(range(1, len(first.trials) + 1))
    # the attempt "dies" after its last trial in the budget's first half and is retried at
    # once: that state, through the checkpoint's bytes, its wall-clock start moved to now
    # less what it had spent
    number, state = [(n, s) for n, s in states if s["elapsed"] < BUDGET / 2][-1]
    state = checkpoint_from_bytes(checkpoint_to_bytes(state))
    state["started_at"] = time.time() - state["elapsed"]
    again = search(data, PARAMS, tmp_path / "again", resume=state)
    assert again.trials[:number] == first.trials[:number]  # carried, none fitted again
    assert len(again.trials) > number and again.resumed == number
    assert again.summary()["resumed_trials"] == number
    assert 0.6 * BUDGET <= again.search_seconds <= 1.1 * BUDGET, again.search_seconds
    check_model_dir(tmp_path / "again")


def test_an_earlier_winner_unbeaten_is_fitted_again_for_its_export(tmp_path: Path) -> None:
    data = tabular(300)
    families = families_for(data.task, len(data.train), 5, repeats=5)
    winner = Trial("logistic_regression", {"C": 1.0, "class_weight": "none"}, 0.05, 1.0)
    state = checkpoint_state(PARAMS, [winner], time.time() - BUDGET, BUDGET)  # all spent
    found = search(data, PARAMS, tmp_path, resume=state)
    assert found.trials == [winner] and found.best == winner and found.refit
    assert check_model_dir(tmp_path)["architecture"] == "sklearn-logistic-regression"
    # another search's state, or a trial off the grids, is not carried
    assert restore({**state, "seed": 3}, PARAMS, families) is None
    assert restore({**state, "budget": 9.0}, PARAMS, families) is None
    assert restore(None, PARAMS, families) is None
    off_grid = checkpoint_state(PARAMS, [Trial("logistic_regression", {"C": 3.0}, 0.1, 0.5)], 0, 1)
    carried = restore(off_grid, PARAMS, families, wall=lambda: 5.0)
    assert carried is not None and carried.trials == [] and carried.elapsed == 5.0
