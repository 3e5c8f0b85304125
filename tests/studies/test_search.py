"""A study's decisions, made by Optuna on a study rebuilt from Nimbus's trial records."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import pytest

from nimbus.errors import InvalidInput
from nimbus.studies.search import (
    CONSIDERED,
    MAX_GRID,
    TIE_EPS,
    SearchConfig,
    TrialRecord,
    TrialState,
    best,
    grid_size,
    importances,
    judged,
    next_params,
    prune_decision,
    startup_trials,
    tie_breaker,
    tpe_options,
)
from nimbus.studies.space import parse_space

SPACE = parse_space(["lr=loguniform(1e-4,1e-1)", "hidden=choice(64,128,256)", "epochs=5"])


def score(params: Mapping[str, object]) -> float:
    """A known landscape: best near lr=1e-2 with 128 hidden units."""
    lr, hidden = float(str(params["lr"])), int(str(params["hidden"]))
    return 1.0 - abs(math.log10(lr) + 2) / 3 - (0.1 if hidden != 128 else 0.0)


def run(config: SearchConfig, n: int, value: float | None = None) -> list[TrialRecord]:
    """``n`` trials one after the other, each asked for, run and recorded."""
    trials: list[TrialRecord] = []
    for number in range(n):
        asked = next_params(config, trials)
        searched = {k: v for k, v in asked.params.items() if k != "epochs"}
        got = score(asked.params) if value is None else value
        trials.append(
            TrialRecord(number, searched, TrialState.COMPLETE, got, {}, asked.system_attrs)
        )
    return trials


def test_the_next_params_lie_in_the_space_with_the_fixed_ones() -> None:
    config = SearchConfig(SPACE, seed=3)
    for sampler in ("tpe", "random", "cmaes"):
        trials = run(SearchConfig(SPACE, sampler=sampler, seed=3), 12)
        for trial in trials:
            assert 1e-4 <= float(str(trial.params["lr"])) <= 1e-1
            assert trial.params["hidden"] in (64, 128, 256)
    assert next_params(config, []).params["epochs"] == 5


def test_the_same_history_and_seed_ask_for_the_same_params() -> None:
    """What makes a restart mid-study safe: the decision is a function of the records."""
    config = SearchConfig(SPACE, seed=11)
    history = run(config, 8)
    assert next_params(config, history) == next_params(config, history)
    assert run(config, 8) == history
    assert next_params(SearchConfig(SPACE, seed=12), history) != next_params(config, history)


def test_neighbouring_seeds_ask_for_unrelated_params() -> None:
    """Study s+1 does not replay study s shifted by one trial (the seed is mixed with the
    history, not added to it)."""
    for sampler in ("random", "tpe"):
        one = run(SearchConfig(SPACE, sampler=sampler, seed=1), 12)
        two = run(SearchConfig(SPACE, sampler=sampler, seed=2), 12)
        first = {float(str(t.params["lr"])) for t in one}
        assert not first & {float(str(t.params["lr"])) for t in two}


def test_tpe_finds_the_good_region_on_a_known_landscape() -> None:
    trials = run(SearchConfig(SPACE, seed=5), 30)
    found = best("maximize", trials)
    assert found is not None and found.value is not None and found.value > 0.9


def test_tpe_models_jointly_and_starts_random_for_a_share_of_the_budget() -> None:
    """Pinned, not Optuna's defaults (Optuna 4 samples each parameter independently): the
    same seed asks the same on every Optuna the project allows."""
    assert tpe_options(SearchConfig(SPACE))["multivariate"] is True
    assert tpe_options(SearchConfig(SPACE))["constant_liar"] is False
    assert tpe_options(SearchConfig(SPACE, parallel=2))["constant_liar"] is True
    budgets = [None, 1, 20, 29, 30, 40, 53, 54, 1000]
    assert [startup_trials(b) for b in budgets] == [10, 10, 10, 10, 11, 15, 19, 20, 20]
    assert tpe_options(SearchConfig(SPACE, trials=40))["n_startup_trials"] == 15


def test_tpe_asks_what_random_search_asks_until_its_startup_ends() -> None:
    """TPE's first trials are its random sampler's, seeded as a random study's: a 40-trial
    study's first 15 are the random study's, its 16th is TPE's own."""
    tpe = run(SearchConfig(SPACE, seed=7, trials=40), 16)
    rnd = run(SearchConfig(SPACE, sampler="random", seed=7, trials=40), 16)
    assert [t.params for t in tpe[:15]] == [t.params for t in rnd[:15]]
    assert tpe[15].params != rnd[15].params


def test_parallel_trials_are_not_asked_for_the_same_point() -> None:
    space = parse_space(["hidden=choice(64,128,256,512)", "layers=int(1,3)"])
    config = SearchConfig(space, seed=1, parallel=3)
    history = [
        TrialRecord(n, {"hidden": h, "layers": 1}, TrialState.COMPLETE, 0.5 + n / 10)
        for n, h in enumerate((64, 128, 256, 512, 64, 128, 256, 512, 64, 128, 256))
    ]
    running: list[TrialRecord] = []
    for number in range(len(history), len(history) + 3):
        asked = next_params(config, history + running)
        running.append(TrialRecord(number, asked.params, TrialState.RUNNING))
    assert len({tuple(sorted(t.params.items())) for t in running}) == 3


def test_a_grid_walks_every_point_once() -> None:
    space = parse_space(["hidden=choice(64,128)", "layers=int(1,3)", "epochs=2"])
    config = SearchConfig(space, sampler="grid", seed=0)
    assert grid_size(space) == 6
    trials = run(config, 6, value=0.5)
    points = {(t.params["hidden"], t.params["layers"]) for t in trials}
    assert points == set(itertools.product((64, 128), (1, 2, 3)))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"sampler": "bayes"}, "unknown sampler 'bayes'"),
        ({"pruner": "hyperband2"}, "unknown pruner 'hyperband2'"),
        ({"direction": "up"}, "unknown direction 'up'"),
        ({"parallel": 0}, "parallel must be at least 1"),
        ({"sampler": "grid"}, "a float range has no grid"),
    ],
)
def test_a_bad_search_is_refused_naming_it(options: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        SearchConfig(SPACE, **options)  # type: ignore[arg-type]
    assert named in raised.value.message


def test_too_big_a_grid_is_refused() -> None:
    space = parse_space(["a=int(1,1000)", "b=int(1,1000)"])
    with pytest.raises(InvalidInput, match=f"more than {MAX_GRID} points"):
        SearchConfig(space, sampler="grid")


def curve(final: float, steps: int) -> dict[int, float]:
    """A learning curve rising to ``final``: what a trial's per-epoch metric looks like."""
    return {step: final * (1 - 0.5 / step) for step in range(1, steps + 1)}


@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_a_trial_far_behind_the_others_is_pruned_and_a_good_one_is_not(pruner: str) -> None:
    config = SearchConfig(SPACE, pruner=pruner, seed=0)
    trials = [
        TrialRecord(n, {"lr": 1e-2, "hidden": 128}, TrialState.COMPLETE, 0.9 + n / 100)
        for n in range(8)
    ]
    done: list[TrialRecord] = []
    attrs: dict[int, dict[str, object]] = {}
    # The finished trials went through the pruner as they ran (ASHA records their rungs).
    for trial in trials:
        for step in range(1, 6):
            running = TrialRecord(
                trial.number,
                trial.params,
                TrialState.RUNNING,
                intermediate=dict(itertools.islice(curve(0.9, 5).items(), step)),
                system_attrs=attrs.get(trial.number, {}),
            )
            decision = prune_decision(config, [*done, running], trial.number)
            attrs[trial.number] = decision.system_attrs
        done.append(
            TrialRecord(
                trial.number,
                trial.params,
                TrialState.COMPLETE,
                trial.value,
                curve(0.9, 5),
                attrs[trial.number],
            )
        )
    poor = TrialRecord(8, {"lr": 1e-4, "hidden": 64}, TrialState.RUNNING, None, {1: 0.05, 2: 0.06})
    good = TrialRecord(8, {"lr": 1e-2, "hidden": 128}, TrialState.RUNNING, None, curve(0.95, 2))
    assert prune_decision(config, [*done, poor], 8).prune
    assert not prune_decision(config, [*done, good], 8).prune
    # Epochs seen several at once (a round slower than the epochs) are judged each at its
    # own step, as if asked as each ended: a trial far behind at its first epoch is given
    # up there, whatever it reached since; the same answer epoch by epoch.
    late = TrialRecord(8, poor.params, TrialState.RUNNING, None, {1: 0.05, 2: 0.9, 3: 0.99})
    at_once = prune_decision(config, [*done, late], 8)
    assert at_once.prune and at_once.step == 1
    first = TrialRecord(8, poor.params, TrialState.RUNNING, None, {1: 0.05})
    one_by_one = prune_decision(config, [*done, first], 8)
    assert one_by_one.prune and one_by_one.step == 1
    assert at_once.system_attrs == one_by_one.system_attrs
    # A step already judged is not judged again.
    judged = TrialRecord(8, good.params, TrialState.RUNNING, None, curve(0.95, 2))
    attrs_after = prune_decision(config, [*done, judged], 8).system_attrs
    assert attrs_after[CONSIDERED] == 2
    again = TrialRecord(8, good.params, TrialState.RUNNING, None, curve(0.95, 2), attrs_after)
    assert prune_decision(config, [*done, again], 8).system_attrs == attrs_after


def test_the_tie_breaker_orders_equal_values_and_never_reorders_different_ones() -> None:
    assert tie_breaker("val_accuracy") == ("val_loss", -1.0)
    assert tie_breaker("val_macro_f1") == ("val_loss", -1.0)
    assert tie_breaker("val_loss") == ("val_accuracy", 1.0)
    # Equal accuracies: the lower loss (the higher signed tie-breaker) is judged better.
    assert judged(55 / 57, -0.10, "maximize") > judged(55 / 57, -0.11, "maximize")
    assert judged(0.12, 0.97, "minimize") < judged(0.12, 0.96, "minimize")
    # The bound: the move is under TIE_EPS whatever the tie-breaker, so values 2 * TIE_EPS
    # apart (an accuracy on a split of 5e8 rows) keep their order, the worst loss against
    # the best; a 57-row split's step by far.
    for low, high in ((54 / 57, 55 / 57), (0.5, 0.5 + 2 * TIE_EPS)):
        assert judged(high, -1e300, "maximize") > judged(low, 0.0, "maximize")
        assert judged(low, 1e300, "minimize") < judged(high, -1e300, "minimize")
        assert abs(judged(high, -1e300, "maximize") - high) < TIE_EPS
    # No tie-breaker reported (a script's own metrics), or not a number: the plain value.
    assert judged(0.9, None, "maximize") == 0.9
    assert judged(0.9, math.nan, "maximize") == 0.9


def finished(
    config: SearchConfig, steps: list[tuple[dict[int, float], dict[int, float]]]
) -> list[TrialRecord]:
    """Trials that ran one after the other, each ``(curve, tie-breaker)`` through the pruner
    as its epochs ended, then complete at their last step's value."""
    done: list[TrialRecord] = []
    for number, (values, ties) in enumerate(steps):
        attrs: dict[str, object] = {}
        for step in sorted(values):
            running = TrialRecord(
                number,
                {"lr": 1e-2, "hidden": 128},
                TrialState.RUNNING,
                intermediate={s: v for s, v in values.items() if s <= step},
                system_attrs=attrs,
                tiebreak={s: v for s, v in ties.items() if s <= step},
            )
            attrs = prune_decision(config, [*done, running], number).system_attrs
        last = values[max(values)]
        done.append(
            TrialRecord(
                number, {"lr": 1e-2, "hidden": 128}, TrialState.COMPLETE, last, values, attrs, ties
            )
        )
    return done


def test_asha_breaks_ties_at_a_rung_by_the_other_metric_and_the_values_stay_plain() -> None:
    """Eight trials tied at epoch 1 (a coarse accuracy): ASHA keeps the quarter with the
    lowest loss, not every trial tied at the cut-off."""
    config = SearchConfig(SPACE, pruner="asha", seed=0)
    tied = 55 / 57
    done = finished(config, [({1: tied, 2: tied}, {1: -0.1 - n / 100, 2: -0.1}) for n in range(8)])
    params = {"lr": 1e-3, "hidden": 64}

    def trial(loss: float | None) -> TrialRecord:
        ties = {} if loss is None else {1: -loss}
        return TrialRecord(8, params, TrialState.RUNNING, None, {1: tied}, tiebreak=ties)

    assert prune_decision(config, [*done, trial(0.5)], 8).prune  # tied, the worst loss
    assert not prune_decision(config, [*done, trial(0.05)], 8).prune  # tied, the best loss
    # Without the tie-breaker (a script that reports no val_loss) a tie is promoted, as
    # Optuna promotes every value at the cut-off.
    plain = finished(config, [({1: tied, 2: tied}, {}) for _ in range(8)])
    assert not prune_decision(config, [*plain, trial(None)], 8).prune
    # The tie-breaker is the pruner's only: values and the best trial are the plain metric.
    assert {t.value for t in done} == {tied}
    found = best("maximize", done)
    assert found is not None and found.number == 0 and found.value == tied


def test_no_pruner_never_prunes_and_a_trial_with_no_step_is_left_alone() -> None:
    poor = TrialRecord(1, {"lr": 1e-4, "hidden": 64}, TrialState.RUNNING, None, {1: 0.0})
    done = TrialRecord(0, {"lr": 1e-2, "hidden": 128}, TrialState.COMPLETE, 0.9, curve(0.9, 3))
    assert not prune_decision(SearchConfig(SPACE, pruner="none"), [done, poor], 1).prune
    fresh = TrialRecord(1, {"lr": 1e-4, "hidden": 64}, TrialState.RUNNING)
    assert not prune_decision(SearchConfig(SPACE), [done, fresh], 1).prune
    with pytest.raises(ValueError, match="not running"):
        prune_decision(SearchConfig(SPACE), [done], 0)


def test_the_best_trial_follows_the_direction_and_ignores_failures() -> None:
    trials = [
        TrialRecord(0, {"lr": 0.1, "hidden": 64}, TrialState.COMPLETE, 0.7),
        TrialRecord(1, {"lr": 0.01, "hidden": 64}, TrialState.FAILED),
        TrialRecord(2, {"lr": 0.001, "hidden": 64}, TrialState.COMPLETE, 0.9),
        TrialRecord(3, {"lr": 0.002, "hidden": 64}, TrialState.PRUNED, None, {1: 0.99}),
        TrialRecord(4, {"lr": 0.003, "hidden": 64}, TrialState.COMPLETE, 0.9),
    ]
    assert (found := best("maximize", trials)) is not None and found.number == 2
    low = best("minimize", trials)
    assert low is not None and low.number == 0
    assert best("maximize", trials[1:2]) is None
    # A failed trial is history the sampler learns nothing from, never a value.
    assert next_params(SearchConfig(SPACE, seed=1), trials).params["epochs"] == 5


def test_a_trial_curve_takes_the_resumed_attempts_steps() -> None:
    from nimbus.studies.search import curve as trial_curve
    from nimbus.studies.search import final_value

    points = [(1, 1, 0.5), (1, 2, 0.6), (1, 3, 0.55), (2, 3, 0.7), (2, 4, float("nan"))]
    by_step = trial_curve(points)
    assert by_step == {1: 0.5, 2: 0.6, 3: 0.7}
    assert final_value(by_step, best_epoch=2) == 0.6  # the epoch whose weights were kept
    assert final_value(by_step, best_epoch=None) == 0.7
    assert final_value(by_step, best_epoch=9) == 0.7
    assert final_value({}, best_epoch=1) is None


def test_importances_name_the_parameter_the_value_depends_on() -> None:
    """lr moves the known landscape by up to 0.67, hidden by 0.1, dropout not at all: over
    60 trials fANOVA puts lr first and dropout last (at 30 it is too noisy to say), the
    shares sum to 1, and the same trials give the same figures."""
    space = parse_space(
        [
            "lr=loguniform(1e-4,1e-1)",
            "hidden=choice(64,128,256)",
            "dropout=uniform(0,0.5)",
            "epochs=5",
        ]
    )
    for seed in (1, 2):
        config = SearchConfig(space, sampler="random", seed=seed)
        trials = run(config, 60)
        shares = importances(config, trials)
        assert list(shares) == sorted(shares, key=lambda k: -shares[k])
        assert list(shares) == ["lr", "hidden", "dropout"] and shares["lr"] > 0.5
        assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
        assert importances(config, trials) == shares


def test_importances_need_enough_complete_trials() -> None:
    config = SearchConfig(SPACE, sampler="random", seed=2)
    trials = run(config, 6)
    failed = [TrialRecord(t.number, t.params, TrialState.FAILED) for t in trials]
    assert importances(config, trials[:3]) == {}
    assert importances(config, failed) == {}
    assert importances(config, trials[:3] + failed[3:]) == {}
