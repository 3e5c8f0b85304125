"""Studies (``nimbus tune``): the benchmark of issue 12. Prints figures, asserts nothing.

1. TPE vs random search, an equal budget of ``--trials`` (40) trials of the built-in ``mlp``
   on scikit-learn's bundled breast_cancer, ``--seeds`` (10) study seeds, no pruning.
   Target: TPE's best validation score >= random's in at least 8 of 10 seeds. On the study
   metric ``val_accuracy`` (a 57-row val split: most bests tie), then on ``val_loss``
   (minimised, the job keeping its best epoch by val_loss too), which does not tie.
2. ASHA vs no pruning, the same TPE studies with the pruner on. Target: the pruned study's
   best within 1% of the unpruned one's while training <= 35% of its epochs (epochs counted
   as trained: up to and including the one after which a trial was pruned, and early
   stopping ends trials of both arms alike). Rows: the service's ASHA (reduction factor 3,
   ties at a rung broken by val_loss), then ``PRUNING_ROWS`` (``--rows``): the pruner before
   (factor 4, ties not broken), each with and without the tie-breaker, the median pruner,
   and what-ifs (other reduction factors and first rungs: settings the service does not
   offer); and ASHA on val_loss (ties broken by val_accuracy).
3. Trial start overhead through a real server (``tune_platform.py``): a study of ~10 trials
   at parallelism 2; per trial, its job queued -> its first training step; against plain
   jobs of the same model in the same run, paced (one at a time, 15 s apart:
   bench/job_start_latency.py's ``--server`` method) and back to back as a study submits
   them. Target: median <= 0.5 s.

Parts 1 and 2 run in-process (800 trials through a server would take hours on this shared
2-core machine), but with Nimbus's own code where it matters: the decisions are
:mod:`nimbus.studies.search`'s functions on the records the service keeps, and each trial is
trained by the job's training function on the splits an upload makes (``tune_sim.py`` says
exactly how). The space is one a user would write::

    --param lr=loguniform(1e-4,1e-1) --param hidden=choice(64,128,256)
    --param dropout=uniform(0,0.5) --param batch_size=int(16,128,log) --param epochs=20

TPE's first trials (15 of 40: ``nimbus.studies.search.startup_trials``) are drawn by its
random sampler, seeded as the random study's: they are the random study's first trials, so
a seed whose random best lies among them ties (the "random start" line counts them).

Study seeds are 1000 apart: studies whose seeds differ by 1 share almost all their random
draws (the sampler is seeded with seed + trials so far; the "seed overlap" line shows it).

Run: ``.venv/bin/python bench/tune.py [--seeds 10] [--trials 40] [--quick] [--skip ...]``
(``--quick``: a smoke run of every part, tests/studies/test_tune_bench.py runs parts 1-2
of it; ``--json PATH`` writes the figures). The full run takes ~30 min on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tune_sim
from tune_sim import StudyRun, asha_settings, job_splits, run_study, seed_overlap

from nimbus.runtime.data import DataSplits
from nimbus.studies.search import SearchConfig, TrialState

SEED_STRIDE = 1000


@dataclass(frozen=True)
class Objective:
    """The study's metric, as ``--metric`` and ``--direction`` say (and what the user fixes
    with it: the job keeps its best epoch by the same measure)."""

    metric: str
    direction: str
    fixed: tuple[str, ...] = ()

    def at_least(self, a: float, b: float) -> bool:
        """``a`` is as good as ``b`` or better."""
        return a >= b if self.direction == "maximize" else a <= b

    def within(self, a: float, b: float, share: float) -> bool:
        """``a`` is at most ``share`` (relative) worse than ``b``."""
        return a >= b * (1 - share) if self.direction == "maximize" else a <= b * (1 + share)


ACCURACY = Objective("val_accuracy", "maximize")
LOSS = Objective("val_loss", "minimize", ("monitor=val_loss",))
# The rows of part 2 after the service's ASHA (reduction factor 3, the first rung at epoch
# 1, ties at a rung broken by val_loss): ``--rows`` picks some by number. The ASHA settings
# are what-ifs (the service offers none of them); the last field: ties broken by val_loss.
PRUNING_ROWS: tuple[tuple[str, str, dict[str, Any] | None, bool], ...] = (
    ("ASHA factor 4, ties not broken (the service before)", "asha", {"reduction_factor": 4}, False),
    ("ASHA factor 4, ties broken", "asha", {"reduction_factor": 4}, True),
    ("ASHA factor 3, ties not broken", "asha", {"reduction_factor": 3}, False),
    ("median pruner (the service's --pruner median)", "median", None, True),
    ("median pruner, ties not broken", "median", None, False),
    ("ASHA factor 2 (what-if)", "asha", {"reduction_factor": 2}, True),
    (
        "ASHA factor 3, min_resource=2 (what-if)",
        "asha",
        {"reduction_factor": 3, "min_resource": 2},
        True,
    ),
    (
        "ASHA factor 4, min_resource=2 (what-if)",
        "asha",
        {"reduction_factor": 4, "min_resource": 2},
        True,
    ),
)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Bench:
    data: DataSplits
    seeds: list[int]
    trials: int
    epochs: int

    def studies(
        self,
        objective: Objective,
        sampler: str,
        pruner: str,
        decide_every: int = 1,
        tiebreak: bool = True,
    ) -> list[StudyRun]:
        space = tune_sim.user_space(self.epochs, *objective.fixed)
        runs = []
        for seed in self.seeds:
            config = SearchConfig(
                space,
                direction=objective.direction,
                sampler=sampler,
                pruner=pruner,
                seed=seed,
                trials=self.trials,
            )
            runs.append(
                run_study(
                    self.data,
                    config,
                    self.trials,
                    objective.metric,
                    decide_every=decide_every,
                    tiebreak=tiebreak,
                )
            )
        return runs


def dist(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"median {statistics.median(ordered):.4f} mean {statistics.mean(ordered):.4f} "
        f"min {ordered[0]:.4f} max {ordered[-1]:.4f}  [{' '.join(f'{v:.4f}' for v in ordered)}]"
    )


def part_samplers(
    objective: Objective, tpe: list[StudyRun], rnd: list[StudyRun], seeds: list[int]
) -> dict[str, Any]:
    name = objective.metric
    print(
        f"\n1. TPE vs random, metric {name} ({objective.direction}), no pruning: the best "
        f"trial's {name} (its test accuracy), the mean {name} of the complete trials"
    )
    print(
        f"{'seed':>6} | {'TPE best':>8} {'(test)':>7} {'mean':>6} | "
        f"{'random':>8} {'(test)':>7} {'mean':>6} | TPE as good"
    )
    wins = 0
    for seed, t, r in zip(seeds, tpe, rnd, strict=True):
        ok = objective.at_least(t.best_value, r.best_value)
        wins += ok
        print(
            f"{seed:>6} | {t.best_value:8.4f} ({_test(t)}) {t.mean_value():6.3f} | "
            f"{r.best_value:8.4f} ({_test(r)}) {r.mean_value():6.3f} | {'yes' if ok else 'NO'}"
        )
    tpe_best = [t.best_value for t in tpe]
    rnd_best = [r.best_value for r in rnd]
    strictly = sum(
        objective.at_least(t, r) and t != r for t, r in zip(tpe_best, rnd_best, strict=True)
    )
    shared = [_shared_start(t, r) for t, r in zip(tpe, rnd, strict=True)]
    same_best = sum(
        t.best is not None and r.best is not None and t.best.record.params == r.best.record.params
        for t, r in zip(tpe, rnd, strict=True)
    )
    print(
        f"TPE's first {min(shared)}-{max(shared)} trials are the random study's own (its "
        f"random start, seeded alike): in {same_best} seeds both bests are one such trial"
    )
    print(f"TPE best:    {dist(tpe_best)}")
    print(f"random best: {dist(rnd_best)}")
    print(
        f"TPE as good as random or better in {wins} of {len(seeds)} seeds (target >= 8 of 10), "
        f"strictly better in {strictly}, tied in {sum(map(float.__eq__, tpe_best, rnd_best))}; "
        f"mean {name} of the complete trials TPE "
        f"{statistics.mean(t.mean_value() for t in tpe):.4f}, random "
        f"{statistics.mean(r.mean_value() for r in rnd):.4f}"
    )
    return {
        "metric": name,
        "seeds": seeds,
        "tpe_best": tpe_best,
        "random_best": rnd_best,
        "tpe_mean": [t.mean_value() for t in tpe],
        "random_mean": [r.mean_value() for r in rnd],
        "tpe_as_good": wins,
        "tpe_strictly_better": strictly,
        "trials": [len(t.trials) for t in tpe + rnd],
        "shared_start": shared,
        "same_best_trial": same_best,
    }


def _shared_start(one: StudyRun, other: StudyRun) -> int:
    """How many first trials the two studies share (the same params)."""
    count = 0
    for a, b in zip(one.trials, other.trials, strict=False):
        if a.record.params != b.record.params:
            break
        count += 1
    return count


def _test(run: StudyRun) -> str:
    best = run.best
    return "  -  " if best is None or best.test_accuracy is None else f"{best.test_accuracy:.3f}"


def part_pruning(
    label: str,
    pruned: list[StudyRun],
    full: list[StudyRun],
    seeds: list[int],
    objective: Objective = ACCURACY,
) -> dict[str, Any]:
    print(
        f"\n2. {label} vs no pruning, TPE both: best {objective.metric}, epochs trained, "
        "trials complete/pruned"
    )
    print(
        f"{'seed':>6} | {'pruned':>8} {'epochs':>6} {'c/p':>6} | {'full':>8} {'epochs':>6} "
        "| within 1% | epochs ratio"
    )
    within = 0
    for seed, p, f in zip(seeds, pruned, full, strict=True):
        ok = objective.within(p.best_value, f.best_value, 0.01)
        within += ok
        counts = f"{p.count(TrialState.COMPLETE)}/{p.count(TrialState.PRUNED)}"
        print(
            f"{seed:>6} | {p.best_value:8.4f} {p.epochs:6d} {counts:>6} | {f.best_value:8.4f} "
            f"{f.epochs:6d} | {'yes' if ok else 'NO':>9} | {p.epochs / f.epochs:.3f}"
        )
    ratio = sum(p.epochs for p in pruned) / sum(f.epochs for f in full)
    ratios = [p.epochs / f.epochs for p, f in zip(pruned, full, strict=True)]
    trained = Counter(t.epochs for run in pruned for t in run.trials)
    full_mean = statistics.mean(t.epochs for run in full for t in run.trials)
    print(
        f"{label}: best within 1% of the unpruned best in {within} of {len(seeds)} seeds; "
        f"epochs trained {ratio:.3f} of the unpruned studies' (all seeds; per seed median "
        f"{statistics.median(ratios):.3f}, {min(ratios):.3f}-{max(ratios):.3f}); target <= 0.35"
    )
    mean_pruned = statistics.mean(p.best_value for p in pruned)
    mean_full = statistics.mean(f.best_value for f in full)
    mean_within = objective.within(mean_pruned, mean_full, 0.01)
    print(
        f"  the seeds' mean best: pruned {mean_pruned:.4f}, unpruned {mean_full:.4f} "
        f"({'within' if mean_within else 'NOT within'} 1%)"
    )
    print(
        "  trials by epochs trained (epochs: trials): "
        + ", ".join(f"{e}: {n}" for e, n in sorted(trained.items()))
        + f"; an unpruned trial trains {full_mean:.1f} epochs on average (early stopping)"
    )
    return {
        "label": label,
        "pruned_best": [p.best_value for p in pruned],
        "full_best": [f.best_value for f in full],
        "within_1pct": within,
        "mean_best": [mean_pruned, mean_full],
        "mean_within_1pct": mean_within,
        "pruned_epochs": [p.epochs for p in pruned],
        "full_epochs": [f.epochs for f in full],
        "epochs_ratio": ratio,
        "pruned_trials": [p.count(TrialState.PRUNED) for p in pruned],
        "epochs_histogram": dict(sorted(trained.items())),
    }


def _tpe_words(text: str) -> dict[str, Any]:
    """``k=v,...``: integers, true/false."""
    settings: dict[str, Any] = {}
    for word in filter(None, text.split(",")):
        key, _, value = word.partition("=")
        lowered = value.strip().lower()
        settings[key.strip()] = lowered == "true" if lowered in ("true", "false") else int(value)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="the first study seed")
    parser.add_argument(
        "--rows",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=list(range(len(PRUNING_ROWS))),
        help="part 2's rows after the service's, by number from 0 (PRUNING_ROWS)",
    )
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20, help="the fixed epochs of a trial")
    parser.add_argument("--dataset", choices=sorted(tune_sim.LOADERS), default="breast_cancer")
    parser.add_argument("--platform-trials", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run, seconds")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts: samplers (1 on val_accuracy), loss (1 and ASHA on "
        "val_loss), pruning (2 on val_accuracy), platform (3)",
    )
    parser.add_argument(
        "--tpe",
        type=_tpe_words,
        default={},
        help="a what-if: TPE settings over the service's, e.g. n_startup_trials=5,"
        "n_ei_candidates=48,multivariate=false (every part's TPE studies)",
    )
    parser.add_argument("--json", type=Path, help="write the figures there")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.epochs, args.platform_trials = 2, 5, 2, 3
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)  # a job's one CPU slot, as the runtime gives it
    work = Path(tempfile.mkdtemp(prefix="nimbus-tune-"))
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    print(f"bench/tune.py: {load()} at the start; {os.cpu_count()} CPUs")
    if args.tpe:
        print(f"what-if: TPE with {args.tpe} over the service's settings")
    with tune_sim.tpe_settings(**args.tpe):
        try:
            seeds = [args.first_seed + k * SEED_STRIDE for k in range(args.seeds)]
            bench = Bench(job_splits(args.dataset, work), seeds, args.trials, args.epochs)
            data = bench.data
            print(
                f"{args.dataset}: train {len(data.train)}, val {len(data.val)}, test "
                f"{len(data.test)} rows (the upload's splits); {args.trials} mlp trials a study, "
                f"{' '.join(tune_sim.space_words(args.epochs))}; study seeds {seeds}; decisions "
                "by nimbus.studies.search, training by nimbus.runtime.trainer.train, in-process"
            )
            overlap = seed_overlap(tune_sim.user_space(args.epochs), 0, args.trials)
            print(
                f"seed overlap: a random study with seed 1 asks, as its trial n, for the exact "
                f"params of trial n+1 of the study with seed 0 in {overlap} of {args.trials - 1} "
                "trials"
            )
            figures["seed_overlap"] = overlap
            started = time.perf_counter()
            tpe = (
                bench.studies(ACCURACY, "tpe", "none")
                if not {"samplers", "pruning"} <= skip
                else []
            )
            if "samplers" not in skip:
                rnd = bench.studies(ACCURACY, "random", "none")
                figures["samplers"] = part_samplers(ACCURACY, tpe, rnd, seeds)
            if "loss" not in skip:
                tpe_loss = bench.studies(LOSS, "tpe", "none")
                rnd_loss = bench.studies(LOSS, "random", "none")
                figures["samplers_loss"] = part_samplers(LOSS, tpe_loss, rnd_loss, seeds)
                asha_loss = bench.studies(LOSS, "tpe", "asha")
                label = "ASHA (the service's) on val_loss"
                figures["pruning_loss"] = part_pruning(label, asha_loss, tpe_loss, seeds, LOSS)
            if "pruning" not in skip:
                asha = bench.studies(ACCURACY, "tpe", "asha")
                figures["pruning"] = [part_pruning("ASHA (the service's)", asha, tpe, seeds)]
                if not args.quick:
                    for number in args.rows:
                        label, pruner, settings, tiebreak = PRUNING_ROWS[number]
                        with asha_settings(**(settings or {})):
                            runs = bench.studies(ACCURACY, "tpe", pruner, tiebreak=tiebreak)
                        figures["pruning"].append(part_pruning(label, runs, tpe, seeds))
            figures["in_process_seconds"] = time.perf_counter() - started
            print(f"\nparts 1-2 took {figures['in_process_seconds']:.0f} s; {load()}")
            if "platform" not in skip:
                import tune_platform

                figures["platform"] = tune_platform.run(
                    work, args.dataset, args.platform_trials, args.parallel, quick=args.quick
                )
            figures["load_after"] = os.getloadavg()
            print(f"\n{load()} at the end")
            if args.json is not None:
                args.json.write_text(json.dumps(figures, indent=2))
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
