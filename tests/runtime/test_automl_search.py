"""The AutoML search's decisions (runtime/automl_search.py): pure functions of the families,
the trials so far, the time left and a seed; a simulated search under a fake budget."""

from __future__ import annotations

import random

import pytest

from nimbus.runtime.automl_search import (
    Family,
    Proposal,
    Trial,
    best_trial,
    chosen,
    estimate_seconds,
    leaderboard,
    propose,
)

TREES = Family(
    "trees",
    {"n": (10, 20, 40, 80), "depth": (2, 4, 8)},
    start={"depth": 1},
    cost_keys=("n",),
    prior_seconds=0.5,
)
LINEAR = Family("linear", {"C": (0.1, 1.0, 10.0)}, start={"C": 1}, prior_seconds=0.1)
NET = Family(
    "net", {"epochs": (5, 10, 20), "lr": (0.01, 0.1)}, cost_keys=("epochs",), prior_seconds=2
)
FAMILIES = [TREES, LINEAR, NET]


def trial(family: Family, score: float | None, seconds: float = 0.1, **config: object) -> Trial:
    start = family.config(family.start_point)
    return Trial(family.name, {**start, **config}, seconds, score)


def test_families_start_at_their_cheap_points_cheapest_first() -> None:
    first = propose(FAMILIES, [], 100)
    assert first == Proposal("linear", {"C": 1.0}, 0.1)
    trials = [trial(LINEAR, 0.8)]
    assert propose(FAMILIES, trials, 100) == Proposal("trees", {"n": 10, "depth": 4}, 0.5)
    trials.append(trial(TREES, 0.9))
    assert propose(FAMILIES, trials, 100) == Proposal("net", {"epochs": 5, "lr": 0.01}, 2.0)


def test_no_fit_starts_that_would_overrun_the_time_left() -> None:
    assert propose(FAMILIES, [], 0.05) is None  # not even the cheapest start fits
    only_linear = propose(FAMILIES, [trial(LINEAR, 0.8)], 0.3)
    assert only_linear is not None and only_linear.family == "linear"  # trees need 0.5 s
    # every proposal fits what is left, whatever the history
    rng = random.Random(1)
    history: list[Trial] = []
    for step in range(40):
        left = rng.uniform(0.05, 3.0)
        found = propose(FAMILIES, history, left, seed=step)
        if found is None:
            continue
        assert found.estimated_seconds <= left
        family = next(f for f in FAMILIES if f.name == found.family)
        assert found.estimated_seconds == estimate_seconds(family, found.config, history)
        history.append(Trial(found.family, found.config, found.estimated_seconds, rng.random()))


def test_cost_estimates_scale_with_the_cost_parameters() -> None:
    assert estimate_seconds(TREES, {"n": 40, "depth": 8}, []) == pytest.approx(2.0)  # prior
    seen = [
        trial(TREES, 0.9, seconds=3.0, n=10),  # the first fit: one-time costs, left out
        trial(TREES, 0.9, seconds=0.2, n=10, depth=2),
        trial(TREES, 0.9, seconds=0.6, n=20),
    ]
    # the largest rate after the first fit: 0.03 s a tree
    assert estimate_seconds(TREES, {"n": 80, "depth": 2}, seen) == pytest.approx(2.4)
    assert estimate_seconds(TREES, {"n": 80, "depth": 2}, seen[:1]) == pytest.approx(24.0)
    assert estimate_seconds(LINEAR, {"C": 10.0}, seen) == pytest.approx(0.1)  # its own prior


def test_the_search_steps_from_a_familys_best_point_and_never_repeats() -> None:
    trials = [
        trial(LINEAR, 0.70),
        trial(TREES, 0.95, n=20),
        trial(TREES, 0.80, n=40),
        trial(NET, 0.60, seconds=1.0),
    ]
    seen = {(t.family, tuple(sorted(t.config.items()))) for t in trials}
    for _ in range(12 + 3 + 6 - 4):  # every point of every grid, once
        found = propose(FAMILIES, trials, 100, seed=5)
        assert found is not None
        key = (found.family, tuple(sorted(found.config.items())))
        assert key not in seen
        seen.add(key)
        trials.append(Trial(found.family, found.config, 0.1, 0.5))
    assert propose(FAMILIES, trials, 100, seed=5) is None
    # the first step after the starts goes to the best family, one place from its best point
    first = propose(FAMILIES, trials[:4], 100, seed=5)
    assert first is not None and first.family == "trees"
    best = TREES.point({"n": 20, "depth": 4})
    moved = [abs(a - b) for a, b in zip(TREES.point(first.config), best, strict=True)]
    assert sorted(moved) == [0, 1]


def test_the_exploration_bonus_turns_to_a_family_tried_less() -> None:
    # trees: the best score, tried 8 times; net a little worse, tried once
    trials = [
        trial(TREES, 0.90 if n == 10 else 0.85, n=n, depth=d)
        for n in (10, 20)
        for d in (2, 4, 8, 2)
    ][:8]
    trials += [trial(NET, 0.88, seconds=1.0)]
    trials += [trial(LINEAR, 0.5, C=c) for c in (0.1, 1.0, 10.0)]  # linear's grid is exhausted
    found = propose(FAMILIES, trials, 100)
    assert found is not None and found.family == "net"
    # tried nearly as often as the trees (and with a step left), the net's lower score loses
    trials += [
        trial(NET, 0.88, seconds=1.0, epochs=e, lr=lr) for e in (10, 20) for lr in (0.01, 0.1)
    ]
    found = propose(FAMILIES, trials, 100)
    assert found is not None and found.family == "trees"


def test_a_family_that_only_fails_is_left_out() -> None:
    failing = [trial(NET, None, seconds=0.2), trial(NET, None, seconds=0.2, epochs=10)]
    trials = [trial(LINEAR, 0.5), trial(TREES, 0.5), *failing]
    found = [propose(FAMILIES, trials, 100, seed=s) for s in range(10)]
    assert all(f is not None and f.family != "net" for f in found)


def test_proposals_are_reproducible_from_the_seed() -> None:
    trials = [trial(LINEAR, 0.7), trial(TREES, 0.9), trial(NET, 0.8, seconds=1.0)]
    runs = [[propose(FAMILIES, trials, 100, seed=s) for s in range(8)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert len({str(p) for p in runs[0]}) > 1  # the seed does change the step


def test_the_search_stops_when_the_grid_is_exhausted() -> None:
    tiny = Family("tiny", {"k": (1, 2)})
    trials = [Trial("tiny", {"k": 1}, 0.1, 0.5), Trial("tiny", {"k": 2}, 0.1, 0.6)]
    assert propose([tiny], trials, 100) is None


def test_leaderboard_best_first_failures_last() -> None:
    a, b, c, d = (
        trial(LINEAR, 0.8),
        trial(TREES, None),
        trial(NET, 0.9, seconds=2),
        trial(TREES, 0.9, n=20),
    )
    assert leaderboard([a, b, c, d]) == [c, d, a, b]
    assert best_trial([a, b, c, d]) is c
    assert best_trial([b]) is None


def test_equal_scores_go_to_the_lower_log_loss_then_the_earlier() -> None:
    # a tiny set's cross-validated balanced accuracy ties often (wine: five trials at 0.9897)
    unmeasured = Trial("trees", {"n": 10, "depth": 4}, 0.1, 0.9)  # a checkpoint of old
    sure, unsure = trial(LINEAR, 0.9, C=0.1), trial(TREES, 0.9)
    sure = Trial(sure.family, sure.config, 0.1, 0.9, loss=0.15)
    unsure = Trial(unsure.family, unsure.config, 0.1, 0.9, loss=0.4)
    better = Trial("net", {"epochs": 5, "lr": 0.01}, 2, 0.95, loss=0.9)
    twin = Trial("linear", {"C": 10.0}, 0.1, 0.9, loss=0.15)
    trials = [unmeasured, unsure, sure, twin]
    assert best_trial(trials) is sure  # the earlier of the two at 0.15
    assert leaderboard(trials) == [sure, twin, unsure, unmeasured]
    assert best_trial([*trials, better]) is better  # the score first, whatever the loss


def test_the_winner_is_the_lowest_log_loss_within_a_standard_error_of_the_best() -> None:
    # wine: the top score is often one row luckier than configurations that generalise
    lucky = Trial("trees", {"n": 10, "depth": 4}, 0.1, 0.995, loss=0.19, spread=0.006)
    steady = Trial("linear", {"C": 1.0}, 0.1, 0.99, loss=0.07, spread=0.008)
    calibrated = Trial("linear", {"C": 10.0}, 0.1, 0.985, loss=0.05, spread=0.01)
    failed = Trial("net", {"epochs": 5, "lr": 0.01}, 0.1, None)
    trials = [lucky, failed, steady, calibrated]
    assert best_trial(trials) is lucky and chosen(trials) is steady  # 0.985 < 0.995 - 0.006
    wider = Trial(lucky.family, lucky.config, 0.1, 0.995, loss=0.19, spread=0.02)
    assert chosen([wider, steady, calibrated]) is calibrated
    twin = Trial("trees", {"n": 20, "depth": 4}, 0.1, 0.99, loss=0.07, spread=0.0)
    assert chosen([lucky, twin, steady]) is twin  # equal losses: the earlier
    # without folds (no spread) the best score wins, as best_trial has it
    plain = [Trial(t.family, t.config, t.seconds, t.score, t.loss) for t in trials]
    assert chosen(plain) is plain[0]
    assert chosen([failed]) is None and chosen([]) is None


def test_a_simulated_search_spends_its_budget_without_overrunning() -> None:
    """Fits whose real cost is the family's rate times its units (with noise up to 20%
    under the estimate's largest rate): the search never starts a fit past the budget,
    and stops with little of it left."""
    rates = {"trees": 0.01, "linear": 0.05, "net": 0.1}
    rng = random.Random(0)
    budget, spent, trials = 10.0, 0.0, list[Trial]()
    while (found := propose(FAMILIES, trials, budget - spent, seed=1)) is not None:
        family = next(f for f in FAMILIES if f.name == found.family)
        seconds = rates[family.name] * family.units(found.config) * rng.uniform(0.8, 1.0)
        if not any(t.family == family.name for t in trials):
            seconds = min(seconds * 1.5, family.prior_seconds)  # a warm-up on the first fit
        spent += seconds
        assert spent <= budget
        trials.append(Trial(found.family, found.config, seconds, rng.random()))
    assert len(trials) >= 10
    assert {t.family for t in trials} == {"trees", "linear", "net"}
    assert spent >= 0.6 * budget


def test_a_family_needs_a_whole_grid() -> None:
    with pytest.raises(ValueError, match="needs values"):
        Family("empty", {"k": ()})
    with pytest.raises(ValueError, match="not in its grid"):
        Family("bad", {"k": (1,)}, cost_keys=("n",))
