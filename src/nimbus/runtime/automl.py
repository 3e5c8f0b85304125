"""Automatic model selection inside one job (``model: automl``): search, then export the best.

The search runs in this process, in the manner of FLAML: :func:`automl_search.propose`
picks the next configuration of the families that fit the dataset's task
(:mod:`.automl_families`) within the time left, each is fitted on the train split and
scored on the validation split, and the search stops before the budget ends, leaving time
for the winner's final refit (scikit-learn models, on train and val together, when it fits)
and its export as the job's model directory. The budget counts from the first fit to the
model written: the estimates keep every fit that starts inside it, with the export's
reserve (:func:`export_reserve`) held back.

What comes out (:class:`AutomlResult`): the model directory, the leaderboard (every
candidate: family, hyper-parameters, validation score, fit seconds), and the search's
seconds. A dataset without a validation split lends a seeded fifth of its train split.

After each trial the search's state (:func:`checkpoint_state`: the trials, and the wall
time spent since it first started) is handed out as the job's checkpoint; a retried
attempt carries the search on from it (:func:`restore`), the budget counting wall time
across attempts, and fits the earlier attempt's winner again if no later trial beats it
(models are not kept in the checkpoint).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.runtime.automl_families import (
    SKLEARN_ARCHITECTURES,
    Fitted,
    families_for,
    fit,
    refit,
    warm_up,
)
from nimbus.runtime.automl_search import Family, Trial, chosen, leaderboard, propose
from nimbus.runtime.data import DataSplits, Split

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: float(accuracy_score(y, p)),
    "macro_f1": lambda y, p: float(f1_score(y, p, average="macro", zero_division=0)),
    "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p)),
}
LEADERBOARD_FILE = "leaderboard.json"  # the job artifact that holds AutomlResult.summary()
RESULT_ROWS = 25  # the leaderboard's rows kept in the job's result (every job view has it)
RESERVE_SHARE = 0.05  # of the budget, held back for the export besides its estimate
RESERVE_MIN_SECONDS = 0.5  # a random forest's ONNX export took 0.1-0.3 s, more when loaded
VAL_SHARE = 0.2  # of the train split lent as validation when the dataset has none
REFIT_MARGIN = 1.3  # a final fit is estimated at this much of its trial's share
CV_FOLDS = 5  # tabular sets of up to CV_MAX_ROWS train + val rows are cross-validated
CV_MAX_ROWS = 10_000
# A smaller set's folds are drawn again, reshuffled, until a configuration is scored on at
# least CV_MIN_SCORED held-out predictions (at most CV_MAX_REPEATS rounds): on wine's 160
# rows one example moves a fold's score by 3 points, and the best of many configurations
# scored once is mostly the luckiest (rounds reshuffled average some of that noise out).
CV_MIN_SCORED = 500
CV_MAX_REPEATS = 3
EARLY_STOP_SHARE = 0.15  # of a fold's training rows, for the torch families' early stopping
CHECKPOINT_FORMAT = 1  # of the search's state in the job's checkpoint (checkpoint_state)


@dataclass(frozen=True)
class AutomlResult:
    """The search's outcome: the best trial, every trial, and what it cost."""

    best: Trial
    trials: list[Trial]
    metric: str
    budget_seconds: float
    search_seconds: float  # first fit started -> model directory written
    refit: bool  # the winner was fitted again for its export (see final_fit_seconds)
    validation: int = 0  # folds of the cross-validation (a round's); 0: the val split
    resumed: int = 0  # trials carried from earlier attempts (the first ones of ``trials``)
    repeats: int = 1  # rounds of the cross-validation (see cv_repeats)

    def summary(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready: what the job records as its leaderboard (its ``top`` rows; all of
        them by default)."""
        number = {id(t): i for i, t in enumerate(self.trials, start=1)}
        board = leaderboard(self.trials)[:top]
        return {
            "metric": self.metric,
            "budget_seconds": round(self.budget_seconds, 3),
            "search_seconds": round(self.search_seconds, 3),
            "trials": len(self.trials),
            "refit": self.refit,
            "resumed_trials": self.resumed,
            "validation": self.validation_text(),
            "best": trial_row(self.best, number[id(self.best)]),
            "chosen_by": WINNER_RULE,
            "leaderboard": [trial_row(t, number[id(t)]) for t in board],
        }

    def validation_text(self) -> str:
        if not self.validation:
            return "the val split"
        rounds = f"{self.repeats} rounds of " if self.repeats > 1 else ""
        return f"{rounds}{self.validation}-fold cross-validation on train + val"


def trial_row(trial: Trial, number: int) -> dict[str, Any]:
    """One leaderboard row."""
    return {
        "trial": number,
        "family": trial.family,
        "params": dict(trial.config),
        "score": None if trial.score is None else round(trial.score, 6),
        "log_loss": None if trial.loss is None else round(trial.loss, 6),
        "fit_seconds": round(trial.seconds, 4),
    }


WINNER_RULE = "the lowest log loss among the trials within one standard error of the top score"


def leaderboard_text(summary: dict[str, Any], top: int = 10) -> str:
    """The leaderboard as the job log shows it: the best ``top`` trials."""
    lines = [
        f"automl: {summary['trials']} trials in {summary['search_seconds']:.1f} s of a "
        f"{summary['budget_seconds']:g} s budget; {summary['metric']} on "
        f"{summary['validation']}",
        f"{'rank':>4}  {'trial':>5}  {'family':<20} {'score':>8} {'fit s':>8}  params",
    ]
    winner = summary["best"]["trial"]
    for rank, row in enumerate(summary["leaderboard"][:top], start=1):
        score = "failed" if row["score"] is None else f"{row['score']:.4f}"
        params = " ".join(f"{k}={v}" for k, v in row["params"].items())
        mark = "*" if row["trial"] == winner else " "
        lines.append(
            f"{rank:>4}{mark} {row['trial']:>5}  {row['family']:<20} {score:>8} "
            f"{row['fit_seconds']:>8.3f}  {params}"
        )
    lines.append(f"* the model: trial {winner}, {summary['chosen_by']}")
    return "\n".join(lines)


def final_fit_seconds(
    best: Trial, rows: tuple[int, int], folds: int, *, saved: bool = True, repeats: int = 1
) -> float:
    """The estimated seconds of the winner's final fit (0: it has none). Cross-validated,
    its trial was ``folds`` fits (``repeats`` rounds of ``folds / repeats``, k, each on
    (k-1)/k of train + val): one fit on all of it costs about ``seconds / folds * k / (k-1)``.
    Otherwise a scikit-learn winner is refitted on train + val (``rows``: their sizes); a
    torch one keeps its weights, unless it has no model ``saved`` (an earlier attempt's
    winner): then it is fitted again as in its trial."""
    train, val = rows
    if folds:
        k = max(folds // max(repeats, 1), 2)
        return best.seconds / folds * k / (k - 1) * REFIT_MARGIN
    if best.family in SKLEARN_ARCHITECTURES and val:
        return best.seconds * REFIT_MARGIN * (train + val) / max(train, 1)
    return 0.0 if saved else best.seconds * REFIT_MARGIN


def export_reserve(budget: float) -> float:
    """Seconds held back from the search for the winner's export."""
    return max(RESERVE_MIN_SECONDS, RESERVE_SHARE * budget)


def cv_repeats(rows: int) -> int:
    """The rounds of cross-validation for ``rows`` train + val rows: enough that a
    configuration is scored on :data:`CV_MIN_SCORED` held-out predictions, at most
    :data:`CV_MAX_REPEATS` (1 from CV_MIN_SCORED rows up)."""
    return max(1, min(CV_MAX_REPEATS, -(-CV_MIN_SCORED // max(rows, 1))))


def cv_folds(data: DataSplits, seed: int) -> list[DataSplits]:
    """Stratified folds of train + val for a tabular set of at most :data:`CV_MAX_ROWS`
    rows; none for larger or other sets, or when a class has fewer than two examples. A set
    of fewer than :data:`CV_MIN_SCORED` rows gets :func:`cv_repeats` rounds of them, each
    reshuffled with its own seed (a round's folds together hold out every row once).

    Each fold's held-out part is its ``test`` split, what the fold is scored on; the rest is
    its ``train`` and a seeded :data:`EARLY_STOP_SHARE` of it its ``val``, which the torch
    families watch to stop early (the scikit-learn ones train on both). So no family's
    score is chosen on the rows it is scored on."""
    if data.task is not Task.TABULAR or len(data.train) + len(data.val) > CV_MAX_ROWS:
        return []
    x = np.concatenate([np.asarray(data.train.x), np.asarray(data.val.x)])
    y = np.concatenate([np.asarray(data.train.y), np.asarray(data.val.y)])
    counts = np.bincount(y)
    k = min(CV_FOLDS, int(counts[counts > 0].min()))
    if k < 2:
        return []
    folds = []
    for round_ in range(cv_repeats(len(y))):
        shuffle = (seed + round_ * 7919) % 2**32
        for rest, held in StratifiedKFold(k, shuffle=True, random_state=shuffle).split(x, y):
            fit_rows, stop_rows = _split_off(rest, y[rest], shuffle)
            folds.append(
                DataSplits(
                    data.task,
                    data.classes,
                    Split(x[fit_rows], y[fit_rows]),
                    Split(x[stop_rows], y[stop_rows]),
                    Split(x[held], y[held]),
                    data.features,
                )
            )
    return folds


def _split_off(rows: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` less a seeded :data:`EARLY_STOP_SHARE` of them (stratified when every class
    has two), and that share."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        kept, share = train_test_split(
            rows, test_size=EARLY_STOP_SHARE, random_state=seed % 2**32, stratify=stratify
        )
    except ValueError:  # too few rows of a class for a stratified share
        kept, share = train_test_split(rows, test_size=EARLY_STOP_SHARE, random_state=seed % 2**32)
    return np.sort(kept), np.sort(share)


def search(
    data: DataSplits,
    params: dict[str, Any],
    out_dir: Path,
    *,
    threads: int = 1,
    on_trial: Callable[[int, Trial, Trial], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
) -> AutomlResult:
    """Search within ``params["budget"]`` seconds for the configuration with the best
    ``params["metric"]`` (cross-validated on train + val for tabular sets of up to
    :data:`CV_MAX_ROWS` rows, else on the validation split), then write it as a model
    directory in ``out_dir``. ``on_trial(number, trial, best)`` is told of each finished
    trial, and ``on_checkpoint(number, state)`` is given the search's state after it;
    ``resume``, such a state from an earlier attempt, carries the search on (see
    :func:`restore`)."""
    metric, seed = str(params["metric"]), int(params["seed"])
    if metric not in METRICS:
        raise InvalidInput(f"unknown metric {metric!r}; use {', '.join(METRICS)}")
    data = with_validation(data, seed)
    folds = cv_folds(data, seed)
    features = int(data.train.x.shape[1]) if data.task is Task.TABULAR else 1
    families = families_for(data.task, len(data.train), features, repeats=max(1, len(folds)))
    warm_up()
    # BLAS and OpenMP pools sized to the job's CPUs: more threads than cores thrash
    carried = restore(resume, params, families)
    with threadpool_limits(threads):
        return _search(
            data, folds, families, params, out_dir, threads, on_trial, clock, carried, on_checkpoint
        )


@dataclass(frozen=True)
class Carried:
    """What an earlier attempt's checkpoint carries into this one: its trials, the wall
    time the search started (``time.time()``), and the seconds it had spent by then."""

    trials: list[Trial]
    started_at: float
    elapsed: float


def checkpoint_state(
    params: dict[str, Any], trials: list[Trial], started_at: float, elapsed: float
) -> dict[str, Any]:
    """The search's state after a trial, as the job's checkpoint holds it (JSON scalars):
    every finished trial, the seed, metric and budget it ran under, when it started (wall
    clock) and the seconds spent."""
    return {
        "automl": CHECKPOINT_FORMAT,
        "seed": int(params["seed"]),
        "metric": str(params["metric"]),
        "budget": float(params["budget"]),
        "started_at": started_at,
        "elapsed": elapsed,
        "trials": [
            {
                "family": t.family,
                "config": dict(t.config),
                "seconds": t.seconds,
                "score": t.score,
                "loss": t.loss,
                "spread": t.spread,
            }
            for t in trials
        ],
    }


def restore(
    state: dict[str, Any] | None,
    params: dict[str, Any],
    families: list[Family],
    wall: Callable[[], float] = time.time,
) -> Carried | None:
    """The trials and spent budget of an earlier attempt's :func:`checkpoint_state`, or None
    to start afresh (no state, or one of another search: its seed, metric or budget differ).
    The budget counts wall time across attempts: what was spent is the time since the first
    attempt's search started (the restart included), at least the seconds the checkpoint
    recorded (a clock that went back, or another machine's). Trials not on this search's
    grids are left out."""
    if not state or state.get("automl") != CHECKPOINT_FORMAT:
        return None
    asked = (int(params["seed"]), str(params["metric"]), float(params["budget"]))
    if (state.get("seed"), state.get("metric"), state.get("budget")) != asked:
        return None
    grids = {f.name: f for f in families}
    trials = []
    for row in state.get("trials") or []:
        family, config = grids.get(row["family"]), dict(row["config"])
        try:
            if family is None or family.config(family.point(config)) != config:
                continue
        except (KeyError, ValueError):
            continue
        score, loss, spread = row["score"], row.get("loss"), row.get("spread")
        trials.append(Trial(family.name, config, float(row["seconds"]), score, loss, spread))
    started_at, elapsed = float(state["started_at"]), float(state["elapsed"])
    return Carried(trials, started_at, max(elapsed, wall() - started_at))


def _search(
    data: DataSplits,
    folds: list[DataSplits],
    families: list[Family],
    params: dict[str, Any],
    out_dir: Path,
    threads: int,
    on_trial: Callable[[int, Trial, Trial], None] | None,
    clock: Callable[[], float],
    carried: Carried | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
) -> AutomlResult:
    budget, metric, seed = float(params["budget"]), str(params["metric"]), int(params["seed"])
    rows = (len(data.train), len(data.val))
    repeats = cv_repeats(sum(rows)) if folds else 1
    trials: list[Trial] = list(carried.trials) if carried else []
    # an earlier attempt's best keeps no model: fitted again at the end unless beaten
    earlier = chosen(trials)
    best: tuple[Trial, Fitted | None] | None = (earlier, None) if earlier else None
    start = clock() - (carried.elapsed if carried else 0.0)
    started_at = carried.started_at if carried else time.time()
    deadline = start + budget - export_reserve(budget)
    while True:
        left = budget - (clock() - start) - export_reserve(budget)
        if best is not None:
            saved = best[1] is not None
            left -= final_fit_seconds(best[0], rows, len(folds), saved=saved, repeats=repeats)
        proposal = propose(families, trials, left, seed)
        if proposal is None:
            break
        began = clock()
        fitted, score, loss, spread = _try(
            proposal.family,
            proposal.config,
            data,
            folds,
            metric,
            seed=seed,
            threads=threads,
            # its remaining folds skipped once the next would end past the deadline
            stop=lambda upcoming: clock() + upcoming >= deadline,
            clock=clock,
        )
        trial = Trial(proposal.family, proposal.config, clock() - began, score, loss, spread)
        trials.append(trial)
        pick = chosen(trials)
        if pick is trial and fitted is not None:
            best = (trial, fitted)
        elif pick is not None and (best is None or pick is not best[0]):
            best = (pick, None)  # an earlier trial, its model not kept: fitted at the end
        if on_trial is not None and best is not None:
            on_trial(len(trials), trial, best[0])
        if on_checkpoint is not None:
            state = checkpoint_state(params, trials, started_at, clock() - start)
            on_checkpoint(len(trials), state)
    if best is None:
        raise InvalidInput(
            f"no model could be fitted within the budget of {budget:g} s"
            + (f" ({len(trials)} fits failed)" if trials else ": give it more time")
        )
    winner, fitted = best
    cost = final_fit_seconds(winner, rows, len(folds), repeats=repeats)
    # an earlier attempt's winner is fitted whatever the time left: there is no model else
    refitted = fitted is None or 0 < cost <= budget - (clock() - start) - export_reserve(budget)
    if refitted:
        fitted = _final_fit(winner, fitted, data, seed, threads)
    assert fitted is not None
    fitted.export(data, out_dir)
    resumed = len(carried.trials) if carried else 0
    return AutomlResult(
        winner,
        trials,
        metric,
        budget,
        clock() - start,
        refitted,
        validation=len(folds) // repeats,
        resumed=resumed,
        repeats=repeats,
    )


def _final_fit(
    winner: Trial, fitted: Fitted | None, data: DataSplits, seed: int, threads: int
) -> Fitted:
    """The winner fitted on train + val (scikit-learn), or on train watching val (torch)."""
    if winner.family in SKLEARN_ARCHITECTURES:
        if fitted is None:  # an earlier attempt's winner: fitted here for the first time
            config = dict(winner.config)
            return fit(winner.family, config, data, seed=seed, threads=threads, with_val=True)
        return refit(fitted, data, seed=seed, threads=threads)
    return fit(winner.family, dict(winner.config), data, seed=seed, threads=threads)


def _try(
    family: str,
    config: dict[str, Any],
    data: DataSplits,
    folds: list[DataSplits],
    metric: str,
    *,
    seed: int,
    threads: int,
    stop: Callable[[float], bool],
    clock: Callable[[], float],
) -> tuple[Fitted | None, float | None, float | None, float | None]:
    """Fit and score one configuration: its mean score and log loss over the folds (the
    log loss breaks ties between equal scores; the last fold's
    model kept; the folds after ``stop(seconds of the next fold)`` turns true skipped, a
    fold's seconds guessed as the mean of those done) or its score on the val split. A
    configuration that fails is a failed trial (its error printed to the job log), not the
    end of the search."""
    try:
        scores, losses = [], []
        fitted: Fitted | None = None
        scored = "test" if folds else "val"  # a fold's held-out part (see cv_folds)
        began = clock()
        for part in folds or [data]:
            fitted = fit(family, config, part, seed=seed, threads=threads, with_val=bool(folds))
            probabilities = fitted.probabilities(part, scored)
            truth = np.asarray(getattr(part, scored).y)
            scores.append(METRICS[metric](truth, np.argmax(probabilities, axis=1)))
            losses.append(log_loss(truth, probabilities, labels=range(len(part.classes))))
            # a first fit far slower than its family's prior guessed, or a loaded machine
            if stop((clock() - began) / len(scores)):
                break
        spread = float(np.std(scores, ddof=1) / np.sqrt(len(scores))) if len(scores) > 1 else None
        return fitted, float(np.mean(scores)), float(np.mean(losses)), spread
    except Exception:
        print(f"automl: {family} {config} failed:", flush=True)
        traceback.print_exc(limit=3)
        return None, None, None, None


def with_validation(data: DataSplits, seed: int) -> DataSplits:
    """``data``, or with a seeded stratified fifth of its train split as validation when
    it has no validation split."""
    if len(data.val):
        return data
    x, y = np.asarray(data.train.x), np.asarray(data.train.y)
    counts = np.bincount(y)
    stratify = y if len(counts[counts > 0]) > 1 and counts[counts > 0].min() >= 2 else None
    if len(y) < 2:
        raise InvalidInput("AutoML needs at least two train examples")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VAL_SHARE, random_state=seed % 2**32, stratify=stratify
    )
    return DataSplits(
        data.task,
        data.classes,
        Split(x_train, y_train),
        Split(x_val, y_val),
        data.test,
        data.features,
        data.image_transform,
    )
