"""The decisions of an AutoML search, as plain functions: which configuration to fit next
within the time left, or to stop.

The search is cost-aware, in the manner of FLAML's: every family of models has a grid of
hyper-parameter values ordered cheap to expensive and a cheap starting point. Families are
first tried at their starting points, cheapest first. After that, a family is chosen by an
upper confidence bound on its best validation score (its best so far, plus a bonus that
shrinks as the family is tried more), and within it the search takes a step from the
family's best point: one hyper-parameter moved one place along its grid (a random
untried neighbour; a random untried point once every neighbour is tried).

Time is what the search spends, so no fit starts whose estimated cost exceeds the time
left: a family's cost is estimated from its own past fits (seconds per unit of its cost
parameters, such as trees or epochs; the largest rate seen, as a safe guess), before any
fit from its prior. When no family has a configuration that fits, the search stops.

Everything here is a function of its inputs (the families, the trials so far, the time
left and a seed): no clock, no fitting.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Point = tuple[int, ...]  # one index into each grid dimension, in the family's order

UCB_WEIGHT = 0.05  # the exploration bonus's weight, in units of the score (0..1)
MAX_FAILURES = 2  # a family whose first fits all fail this often is left out
ENUMERATED_GRID = 4096  # a grid this small is searched point by point once the
RANDOM_TRIES = 64  # neighbours are tried; a larger one at this many random points


@dataclass(frozen=True)
class Family:
    """A kind of model and its search space.

    ``grid`` maps each hyper-parameter to its values, cheapest first; ``start`` is the
    index of each one's starting value (0 when absent); ``cost_keys`` name the numeric
    hyper-parameters whose product is the fit's cost in units; ``prior_seconds`` guesses
    the starting point's fit time before the family has been fitted once.
    """

    name: str
    grid: Mapping[str, Sequence[Any]]
    start: Mapping[str, int] = field(default_factory=dict)
    cost_keys: tuple[str, ...] = ()
    prior_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.grid or any(len(values) == 0 for values in self.grid.values()):
            raise ValueError(f"family {self.name}: every grid dimension needs values")
        for key in (*self.start, *self.cost_keys):
            if key not in self.grid:
                raise ValueError(f"family {self.name}: {key!r} is not in its grid")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.grid)

    @property
    def start_point(self) -> Point:
        return tuple(self.start.get(key, 0) for key in self.keys)

    def config(self, point: Point) -> dict[str, Any]:
        """The hyper-parameters at ``point``."""
        return {key: self.grid[key][i] for key, i in zip(self.keys, point, strict=True)}

    def point(self, config: Mapping[str, Any]) -> Point:
        """The grid point of ``config`` (which must be one of the grid's)."""
        return tuple(list(self.grid[key]).index(config[key]) for key in self.keys)

    def units(self, config: Mapping[str, Any]) -> float:
        """The cost of fitting ``config``, in the family's units (1 without cost keys)."""
        return float(math.prod(float(config[key]) for key in self.cost_keys))


@dataclass(frozen=True)
class Trial:
    """One finished fit: its family and configuration, how long it took, and its score on
    the validation split (None when the fit failed); ``loss``, its log loss there, breaks
    ties between equal scores (the lower first; None when not measured: last); ``spread``,
    the standard error of its score over cross-validation folds (None without folds)."""

    family: str
    config: Mapping[str, Any]
    seconds: float
    score: float | None
    loss: float | None = None
    spread: float | None = None

    def rank_key(self) -> tuple[float, float]:
        """Higher is better: the score, then the lower log loss."""
        score = -math.inf if self.score is None else self.score
        return score, -math.inf if self.loss is None else -self.loss


@dataclass(frozen=True)
class Proposal:
    """The next fit: a family's configuration and the seconds it is expected to take."""

    family: str
    config: dict[str, Any]
    estimated_seconds: float


def estimate_seconds(family: Family, config: Mapping[str, Any], trials: Sequence[Trial]) -> float:
    """The expected fit time of ``config``: the family's largest observed seconds per unit
    times its units; before any fit of the family, its prior scaled from the start point.
    A family's first fit is left out once it has others: it carries one-time costs (a
    library's first call, its lazy imports)."""
    rates = [t.seconds / family.units(t.config) for t in trials if t.family == family.name]
    rates = rates[1:] if len(rates) > 1 else rates
    if rates:
        return max(rates) * family.units(config)
    start = family.units(family.config(family.start_point))
    return family.prior_seconds * family.units(config) / start


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The trial with the highest score, the lowest log loss among equal scores (the
    earliest among equals in both), or None."""
    scored = [t for t in trials if t.score is not None]
    return max(scored, key=Trial.rank_key, default=None)


def chosen(trials: Sequence[Trial]) -> Trial | None:
    """The search's winner: among the trials whose score is within one standard error
    (``spread``) of the best one's, the one with the lowest log loss (then the higher
    score, then the earlier); the best trial itself when it has no spread. Scores of
    configurations on a small set differ by a row or two; the best of many is mostly the
    luckiest, while log loss, continuous, ranks them with less noise."""
    best = best_trial(trials)
    if best is None or best.spread is None or best.score is None:
        return best
    floor = best.score - best.spread
    near = [t for t in trials if t.score is not None and t.score >= floor]
    return min(near, key=lambda t: (math.inf if t.loss is None else t.loss, -(t.score or 0.0)))


def leaderboard(trials: Sequence[Trial]) -> list[Trial]:
    """Scored trials, best first (ties: the lower log loss, then the earlier, as
    :func:`best_trial` keeps it); failed ones last."""
    order = {id(t): i for i, t in enumerate(trials)}
    return sorted(
        trials, key=lambda t: (t.score is None, *(-v for v in t.rank_key()), order[id(t)])
    )


def propose(
    families: Sequence[Family],
    trials: Sequence[Trial],
    seconds_left: float,
    seed: int = 0,
) -> Proposal | None:
    """The next configuration to fit within ``seconds_left``, or None to stop.

    Untried families come first, cheapest start first; then the family with the highest
    upper confidence bound on its score among those with a configuration that fits.
    """
    rng = random.Random(seed * 1_000_003 + len(trials))
    by_family = {f.name: [t for t in trials if t.family == f.name] for f in families}
    untried = [f for f in families if not by_family[f.name]]
    untried.sort(key=lambda f: estimate_seconds(f, f.config(f.start_point), trials))
    for family in untried:
        config = family.config(family.start_point)
        cost = estimate_seconds(family, config, trials)
        if cost <= seconds_left:
            return Proposal(family.name, config, cost)
    choices: list[tuple[float, Proposal]] = []
    total = sum(len(v) for v in by_family.values())
    for family in families:
        own = by_family[family.name]
        if not own or _given_up(own):
            continue
        proposal = _step(family, own, trials, seconds_left, rng)
        if proposal is None:
            continue
        best = max((t.score for t in own if t.score is not None), default=0.0)
        bonus = UCB_WEIGHT * math.sqrt(math.log(max(total, 2)) / len(own))
        choices.append((best + bonus, proposal))
    if not choices:
        return None
    return max(choices, key=lambda c: c[0])[1]


def _given_up(own: Sequence[Trial]) -> bool:
    failures = sum(t.score is None for t in own)
    return failures >= MAX_FAILURES and failures == len(own)


def _step(
    family: Family,
    own: Sequence[Trial],
    trials: Sequence[Trial],
    seconds_left: float,
    rng: random.Random,
) -> Proposal | None:
    """A fitting untried configuration near the family's best point, or anywhere on its
    grid once the neighbours are tried; None when nothing left fits the time."""
    tried = {family.point(t.config) for t in own}
    best = best_trial(own)
    centre = family.point(best.config) if best is not None else family.start_point
    neighbours = [p for p in _neighbours(family, centre) if p not in tried]
    rng.shuffle(neighbours)
    for point in neighbours:
        proposal = _fits(family, point, trials, seconds_left)
        if proposal is not None:
            return proposal
    sizes = [len(family.grid[key]) for key in family.keys]
    if math.prod(sizes) <= ENUMERATED_GRID:  # small enough to look at every point
        points = [p for p in itertools.product(*map(range, sizes)) if p not in tried]
        rng.shuffle(points)
    else:
        points = [tuple(rng.randrange(size) for size in sizes) for _ in range(RANDOM_TRIES)]
    for point in points:
        if point not in tried and (proposal := _fits(family, point, trials, seconds_left)):
            return proposal
    return None


def _fits(
    family: Family, point: Point, trials: Sequence[Trial], seconds_left: float
) -> Proposal | None:
    config = family.config(point)
    cost = estimate_seconds(family, config, trials)
    return Proposal(family.name, config, cost) if cost <= seconds_left else None


def _neighbours(family: Family, point: Point) -> list[Point]:
    """Points one place away along one dimension."""
    found = []
    for d, key in enumerate(family.keys):
        for move in (-1, 1):
            i = point[d] + move
            if 0 <= i < len(family.grid[key]):
                found.append((*point[:d], i, *point[d + 1 :]))
    return found
