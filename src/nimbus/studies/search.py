"""A study's decisions: the next trial's parameters and whether a running trial is pruned.

Optuna makes them (its samplers and pruners, through ask/tell), but holds nothing: the
study's state is Nimbus's (the metadata store's trial rows), and every decision is made on an
in-memory Optuna study rebuilt from those :class:`TrialRecord` s. So a control plane that
restarts mid-study decides exactly as the one before it, and the same history with the same
seed asks for the same parameters (a trial asked for but not recorded before a crash is asked
for again, not duplicated).

Whatever Optuna keeps per trial for its own bookkeeping (ASHA's completed rungs are system
attributes of the trial) comes back in :class:`Pruning` for the caller to record with the
trial, and goes into the next rebuild.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nimbus.errors import InvalidInput
from nimbus.studies.space import Choice, IntRange, Scalar, Space, to_optuna

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("asha", "median", "none")
DIRECTIONS = ("maximize", "minimize")
MAX_GRID = 10_000  # points in a grid study's whole grid
ASHA_REDUCTION = 3  # ASHA keeps 1 in ASHA_REDUCTION trials at each rung
STARTUP_MIN, STARTUP_MAX = 10, 20  # TPE's random trials before it models (startup_trials)


class TrialState(enum.StrEnum):
    """A trial as the study sees it (its job's state decides it)."""

    RUNNING = "running"  # queued or running: asked for, no value yet
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"  # its job failed or was cancelled: no value, never a score


@dataclass(frozen=True)
class TrialRecord:
    number: int
    params: Mapping[str, Scalar]  # the searched parameters it was given
    state: TrialState
    value: float | None = None  # COMPLETE: the metric's final value
    intermediate: Mapping[int, float] = field(default_factory=dict)  # step -> metric
    system_attrs: Mapping[str, Any] = field(default_factory=dict)  # Optuna's bookkeeping
    # step -> the job's other metric (:func:`tie_breaker`), signed: higher is better
    tiebreak: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pruning:
    prune: bool
    system_attrs: dict[str, Any]  # to record with the trial
    step: int | None = None  # pruned: the step at which the pruner gave the trial up


CONSIDERED = "nimbus:considered_step"  # a trial's system attribute: the last step pruned on

# The pruner judges a trial's metric plus at most TIE_EPS of its tie-breaker (the job's other
# epoch metric, squashed into (-1, 1)): so two trials whose metric ties at a rung (a 57-row
# validation accuracy moves in steps of 1/57) are ranked by, say, their validation loss,
# while two whose metric differs by 2 * TIE_EPS or more keep their order (an accuracy on a
# split under 5e8 rows). Only the pruner sees it: a trial's value and the best trial are the
# plain metric.
TIE_EPS = 1e-9


def tie_breaker(metric: str) -> tuple[str, float] | None:
    """The job's epoch metric that breaks the pruner's ties on ``metric``, and its sign
    (1.0 when higher is better): val_loss for any metric but itself, which val_accuracy
    breaks. None when there is none other."""
    other, sign = ("val_accuracy", 1.0) if metric == "val_loss" else ("val_loss", -1.0)
    return None if other == metric else (other, sign)


def judged(value: float, tiebreak: float | None, direction: str) -> float:
    """The value the pruner judges: ``value`` moved by less than :data:`TIE_EPS` towards
    better when the (signed) ``tiebreak`` is higher; ``value`` itself without one."""
    if tiebreak is None or not math.isfinite(tiebreak):
        return value
    squashed = tiebreak / (1.0 + abs(tiebreak))  # monotone, in (-1, 1)
    return value + (TIE_EPS if direction == "maximize" else -TIE_EPS) * squashed


@dataclass(frozen=True)
class SearchConfig:
    space: Space
    direction: str = "maximize"
    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int | None = None
    parallel: int = 1
    trials: int | None = None  # the study's budget (TPE's random start scales with it)

    def __post_init__(self) -> None:
        check_config(self)


def check_config(config: SearchConfig) -> None:
    """Refuse a sampler, pruner or direction Nimbus does not know, and a grid over a space
    that has no grid (a float range) or too big a one."""
    for what, value, known in (
        ("sampler", config.sampler, SAMPLERS),
        ("pruner", config.pruner, PRUNERS),
        ("direction", config.direction, DIRECTIONS),
    ):
        if value not in known:
            raise InvalidInput(f"unknown {what} {value!r} (one of {', '.join(known)})")
    if config.parallel < 1:
        raise InvalidInput(f"parallel must be at least 1, not {config.parallel}")
    if config.sampler == "grid":
        grid_points(config.space)


def grid_points(space: Space) -> dict[str, list[Scalar]]:
    """The grid a grid study walks: each choice's options, each integer range's values."""
    grid: dict[str, list[Scalar]] = {}
    size = 1
    for name, param in space.searched.items():
        if isinstance(param, Choice):
            grid[name] = list(param.options)
        elif isinstance(param, IntRange) and not param.log:
            grid[name] = list(range(param.low, param.high + 1))
        else:
            raise InvalidInput(
                f"parameter {name}: a grid search takes choice(...) and int(low,high) spaces "
                "only (a float range has no grid)"
            )
        size *= len(grid[name])
        if size > MAX_GRID:
            raise InvalidInput(f"the grid has more than {MAX_GRID} points: narrow it")
    return grid


def grid_size(space: Space) -> int:
    size = 1
    for values in grid_points(space).values():
        size *= len(values)
    return size


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's log lines and warnings (experimental features, a categorical that CMA-ES
    samples independently) are not the user's business here."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _sampler(config: SearchConfig, history: int) -> optuna.samplers.BaseSampler:
    import optuna

    # Seeded per decision: the same history asks for the same parameters; the seed and the
    # history are mixed, not added, or study s+1 would ask, as its trial n, for what study s
    # asks as its trial n+1 (bench/tune.py found every trial of two such studies shared).
    seed = None if config.seed is None else _mixed(config.seed, history)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "grid":
        # The grid's order is shuffled by its seed once: the same at every decision, or
        # the trials' grid points would collide.
        grid = dict(grid_points(config.space))
        return optuna.samplers.GridSampler(grid, seed=config.seed or 0)
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, **tpe_options(config))


def tpe_options(config: SearchConfig) -> dict[str, Any]:
    """The TPE sampler's settings for ``config`` (beside its seed).

    - ``multivariate``: one joint density over the searched parameters rather than one per
      parameter. Optuna 5 defaults to it, Optuna 4 to independent sampling; the project
      allows both, so it is pinned: a study's seed asks for the same parameters whichever
      Optuna is installed (and independent TPE did worse: docs/studies.md).
    - ``n_startup_trials``: :func:`startup_trials` of the study's budget.
    - ``constant_liar``: several trials at once, the running ones count as their worst so
      far, so parallel trials are not asked for the same point.
    """
    return {
        "multivariate": True,
        "n_startup_trials": startup_trials(config.trials),
        "constant_liar": config.parallel > 1,
    }


def startup_trials(budget: int | None) -> int:
    """How many of a study's first trials TPE leaves to its random sampler before it models
    the results: 3/8 of the budget, at least Optuna's 10 (so studies under 30 trials keep
    it, as does one whose budget is not known), at most hyperopt's 20. A trial's value is
    noisy (on a 57-row val split), and TPE models the best tenth of what it has seen: with
    10 random trials of 40 it settled on a region too early. bench/tune.py, 40 trials on
    val_loss, seeds 0-9000: 10 random trials, TPE as good as random in 7 seeds; 15, in 8;
    20, 7; 5 (greedier), 5. docs/studies.md has the fresh seeds'."""
    if budget is None:
        return STARTUP_MIN
    return min(STARTUP_MAX, max(STARTUP_MIN, 3 * budget // 8))


def _pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    import optuna

    if config.pruner == "asha":
        # Rungs at epochs 1, 3, 9, ..., a third promoted from each (with the tie-breaker,
        # bench/tune.py: 9 of 10 studies within 1% of the unpruned best on 0.30 of the
        # epochs; Optuna's default factor 4 on 0.30 but 6 of 10).
        return optuna.pruners.SuccessiveHalvingPruner(reduction_factor=ASHA_REDUCTION)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _study(config: SearchConfig, trials: Sequence[TrialRecord]) -> optuna.Study:
    import optuna
    from optuna.trial import TrialState as OptunaState
    from optuna.trial import create_trial

    distributions = to_optuna(config.space)
    maximize = config.direction == "maximize"
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=_sampler(config, len(trials)),
        pruner=_pruner(config),
    )
    states = {
        TrialState.RUNNING: OptunaState.RUNNING,
        TrialState.COMPLETE: OptunaState.COMPLETE,
        TrialState.PRUNED: OptunaState.PRUNED,
        TrialState.FAILED: OptunaState.FAIL,
    }
    for record in sorted(trials, key=lambda t: t.number):
        params = {k: v for k, v in record.params.items() if k in distributions}
        value = record.value if record.state is TrialState.COMPLETE else None
        if record.state is TrialState.COMPLETE and value is None:
            raise ValueError(f"trial {record.number} is complete with no value")
        study.add_trial(
            create_trial(
                state=states[record.state],
                value=value,
                params=params,
                distributions={k: distributions[k] for k in params},
                intermediate_values={
                    step: judged(v, record.tiebreak.get(step), config.direction)
                    for step, v in record.intermediate.items()
                },
                system_attrs=dict(record.system_attrs),
            )
        )
    return study


@dataclass(frozen=True)
class Asked:
    params: dict[str, Scalar]  # the searched ones as the sampler asks, the fixed ones as given
    system_attrs: dict[str, Any]  # to record with the trial (a grid's point)


def next_params(config: SearchConfig, trials: Sequence[TrialRecord]) -> Asked:
    """The next trial's parameters, and what the sampler noted on it."""
    with _quiet():
        study = _study(config, trials)
        trial = study.ask(to_optuna(config.space))
        asked = dict(trial.params)
        attrs = dict(study.get_trials(deepcopy=False)[-1].system_attrs)
    return Asked({**config.space.fixed, **asked}, attrs)


def prune_decision(config: SearchConfig, trials: Sequence[TrialRecord], number: int) -> Pruning:
    """Whether running trial ``number`` is stopped, by the pruner, from its intermediate
    values and the other trials'. The pruner is asked at every step reported since it was
    last asked (:data:`CONSIDERED`), in order, as if asked as each epoch ended: a round that
    sees several new epochs at once decides each rung at its own step (ASHA records a rung
    with the value the trial had there), and a trial given up at step k is pruned at k."""
    running = next((t for t in trials if t.number == number), None)
    if running is None or running.state is not TrialState.RUNNING:
        raise ValueError(f"trial {number} is not running")
    attrs = dict(running.system_attrs)
    considered = int(attrs.get(CONSIDERED, 0))
    steps = sorted(s for s in running.intermediate if s > considered)
    if config.pruner == "none" or not steps:
        return Pruning(False, attrs)
    index = sorted(t.number for t in trials).index(number)  # its place in the rebuild
    others = [t for t in trials if t.number != number]
    with _quiet():
        for step in steps:
            seen = {s: v for s, v in running.intermediate.items() if s <= step}
            now = replace(running, intermediate=seen, system_attrs=attrs)
            study = _study(config, [*others, now])
            prune = bool(study.pruner.prune(study, study.get_trials(deepcopy=False)[index]))
            # The pruner may have recorded on the trial (ASHA: the rungs it completed).
            attrs = {**study.get_trials(deepcopy=False)[index].system_attrs, CONSIDERED: step}
            if prune:
                return Pruning(True, attrs, step)
    return Pruning(False, attrs)


def _mixed(seed: int, history: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, history]).generate_state(1)[0])


def best(direction: str, trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The complete trial with the best value in ``direction`` (the earliest among equals)."""
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(done, key=lambda t: (sign * float(t.value or 0.0), -t.number))


MIN_FOR_IMPORTANCE = 4  # complete trials before importances mean anything


def importances(config: SearchConfig, trials: Sequence[TrialRecord]) -> dict[str, float]:
    """How much of the value's variance each searched parameter explains over the complete
    trials (Optuna's fANOVA, seeded: the same trials give the same figures), summing to 1,
    most important first. Empty under :data:`MIN_FOR_IMPORTANCE` complete trials, or when
    nothing was searched."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [t for t in trials if t.state is TrialState.COMPLETE]
    if len(done) < MIN_FOR_IMPORTANCE or not config.space.searched:
        return {}
    with _quiet():
        study = _study(config, done)
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return {name: float(share) for name, share in found.items()}


def curve(points: Iterable[tuple[int, int, float]]) -> dict[int, float]:
    """A trial's metric by step from its job's ``(attempt, step, value)`` points: a later
    attempt (resumed from a checkpoint) overwrites the steps it ran again."""
    by_step: dict[int, float] = {}
    for _, step, value in sorted(points, key=lambda p: (p[0], p[1])):
        if math.isfinite(value):
            by_step[step] = value
    return by_step


def final_value(by_step: Mapping[int, float], best_epoch: int | None) -> float | None:
    """A finished trial's value: its metric at the epoch whose weights the job kept (the
    built-ins restore their best epoch, and say which), else at its last step."""
    if not by_step:
        return None
    if best_epoch is not None and best_epoch in by_step:
        return by_step[best_epoch]
    return by_step[max(by_step)]
