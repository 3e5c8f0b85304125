"""The training loop of the built-in models: deterministic, resumable, data-parallel.

Determinism: the model is initialised after ``torch.manual_seed(seed)`` and every epoch's
order is a permutation drawn from a seeded :class:`torch.Generator`; the checkpoint
written after each epoch holds both RNG states with the model and optimizer, so a run
resumed from epoch k ends bit-identical to one that never stopped.

Data parallelism: given an initialised process group, every rank draws the same
permutation, takes its own contiguous slice of each global batch, and scales its summed
loss by ``world_size / global_batch`` so that DistributedDataParallel's gradient average
equals the one-worker gradient of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nimbus.errors import InvalidInput
from nimbus.runtime import privacy as dp
from nimbus.runtime.architectures import build_model
from nimbus.runtime.builtins import PREPARERS
from nimbus.runtime.data import DataSplits
from nimbus.runtime.early_stopping import BestEpoch
from nimbus.runtime.evaluation import evaluate
from nimbus.runtime.fairness import with_fairness
from nimbus.runtime.hyperparams import validate_params
from nimbus.runtime.reporter import Reporter

EVAL_BATCH = 512
CHECKPOINT_FORMAT = "nimbus-train/1"


@dataclass
class TrainResult:
    """A trained model (CPU, eval mode, logits out) and everything measured on it."""

    model: nn.Module
    spec: dict[str, Any]  # spec.json
    params: dict[str, Any]  # validated, defaults filled in
    metrics: dict[str, float]  # the kept epoch's train/val figures, best_epoch, test_*
    evaluation: dict[str, Any] | None  # evaluate() on the test split; None if it is empty
    history: list[dict[str, float]]  # one record per epoch
    example_input: np.ndarray  # a few model inputs, for export checks
    resumed_from_epoch: int | None = None


@dataclass(frozen=True)
class _Group:
    group: Any  # a torch ProcessGroup, or None with one worker
    rank: int = 0
    world_size: int = 1
    device: str | torch.device = "cpu"  # where collectives want their tensors

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return [float(v) for v in t.cpu().tolist()]


def _process_group(group: Any) -> _Group:
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return _Group(None)
    group = group if group is not None else dist.group.WORLD
    nccl = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return _Group(group, dist.get_rank(group), dist.get_world_size(group), device)


def train(
    model_name: str,
    data: DataSplits,
    params: dict[str, Any],
    reporter: Reporter,
    *,
    process_group: Any = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train built-in ``model_name`` on ``data`` and score it on the test split.

    ``params`` may be raw (CLI strings); they are validated first. A checkpoint from
    ``reporter.load_checkpoint()`` resumes the run after its epoch. With a process group
    given, or torch.distributed initialised, the run is data-parallel across its ranks.
    """
    params = validate_params(model_name, data.task, params)
    pg = _process_group(process_group)
    if params["batch_size"] < pg.world_size:
        raise InvalidInput(f"batch_size {params['batch_size']} < {pg.world_size} workers")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _deterministic():
        return _Run(model_name, data, params, reporter, pg, device).fit()


class _Run:
    """One training run's collaborators, so the steps below stay short."""

    def __init__(
        self,
        model_name: str,
        data: DataSplits,
        params: dict[str, Any],
        reporter: Reporter,
        pg: _Group,
        device: torch.device,
    ) -> None:
        self.model_name, self.data, self.params = model_name, data, params
        self.reporter, self.pg, self.device = reporter, pg, device
        torch.manual_seed(params["seed"])
        self.prepared = PREPARERS[model_name](data, params)
        self.spec = self.prepared.spec(model_name, data.task, data.classes)
        self.model = build_model(self.spec).to(device)
        self.optimizer = _optimizer(self.model, params)
        self.shuffle = torch.Generator().manual_seed(params["seed"])
        self.history: list[dict[str, float]] = []
        self.best = BestEpoch(params["monitor"], params["patience"])
        self.privacy = dp.plan(params, len(data.train))
        self.stopped_for_privacy = False
        if self.privacy is not None and pg.world_size > 1:
            raise InvalidInput("differentially private training runs on one worker (workers=1)")

    def fit(self) -> TrainResult:
        resumed = None
        state = self.reporter.load_checkpoint()
        if state is not None:
            resumed = self._restore(state)
        net: nn.Module = self.model
        if self.pg.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids, process_group=self.pg.group)
        if self.privacy is not None:
            net, self.optimizer = dp.make_private(self.model, self.optimizer, self.privacy)
        for epoch in range(len(self.history) + 1, self.params["epochs"] + 1):
            if self.best.should_stop:
                break
            if self.privacy is not None and not dp.next_epoch_fits(self.privacy):
                self.stopped_for_privacy = True  # another epoch would pass the ε asked for
                break
            if self.privacy is not None:
                with dp.quiet():
                    trained = self._train_epoch_private(net, epoch, self.privacy)
            else:
                trained = self._train_epoch(net, epoch)
            record = {"epoch": float(epoch), **trained}
            if len(self.data.val):
                record |= self._score("val")
            self.history.append(record)
            self.best.update(epoch, record, self.model)
            if self.pg.rank == 0:
                self.reporter.log(epoch, **{k: v for k, v in record.items() if k != "epoch"})
                self.reporter.save_checkpoint(self._snapshot())
        return self._finish(resumed)

    def _train_epoch(self, net: nn.Module, epoch: int) -> dict[str, float]:
        net.train()
        pg, train = self.pg, self.data.train
        n, size = len(train), self.params["batch_size"]
        order = torch.randperm(n, generator=self.shuffle)  # identical on every rank
        batches = math.ceil(n / size)
        loss_sum, correct = 0.0, 0.0
        for b in range(batches):
            global_idx = order[b * size : (b + 1) * size]
            mine = (
                global_idx.tensor_split(pg.world_size)[pg.rank] if pg.world_size > 1 else global_idx
            )
            idx = mine.numpy()
            x = self.prepared.batch("train", idx).to(self.device)
            y = torch.from_numpy(train.y[idx]).to(self.device)
            logits = net(x)
            summed = F.cross_entropy(logits, y, reduction="sum")
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(summed * (pg.world_size / len(global_idx)))
            self.optimizer.step()
            loss_sum += summed.item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            if pg.rank == 0:
                self.reporter.progress(epoch, self.params["epochs"], b + 1, batches)
        loss_sum, correct = pg.all_sum([loss_sum, correct])
        return {"train_loss": loss_sum / n, "train_accuracy": correct / n}

    def _train_epoch_private(
        self, net: nn.Module, epoch: int, privacy: dp.Privacy
    ) -> dict[str, float]:
        """A DP-SGD epoch: Poisson batches, each example's gradient clipped, the sum
        noised (the optimizer), the ε spent so far reported."""
        net.train()
        train = self.data.train
        loss_sum, correct, seen = 0.0, 0.0, 0
        for b, idx in enumerate(dp.poisson_batches(len(train), privacy, self.shuffle)):
            x = self.prepared.batch("train", idx).to(self.device)
            y = torch.from_numpy(train.y[idx]).to(self.device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            self.optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += len(idx)
            self.reporter.progress(epoch, self.params["epochs"], b + 1, privacy.steps_per_epoch)
        seen = max(seen, 1)
        return {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "dp_epsilon": dp.spent(privacy),
        }

    @torch.no_grad()
    def _predict(self, split: str, idx: np.ndarray) -> torch.Tensor:
        """Logits for rows ``idx`` of ``split``: the plain module, no collectives."""
        self.model.eval()
        out = [
            self.model(self.prepared.batch(split, idx[i : i + EVAL_BATCH]).to(self.device))
            .float()
            .cpu()
            for i in range(0, len(idx), EVAL_BATCH)
        ]
        self.model.train()
        return torch.cat(out)

    def _score(self, split: str) -> dict[str, float]:
        """Loss and accuracy on ``split``, each rank scoring its own shard."""
        y_all = getattr(self.data, split).y
        idx = np.array_split(np.arange(len(y_all)), self.pg.world_size)[self.pg.rank]
        loss_sum, correct = 0.0, 0.0
        if len(idx):
            logits = self._predict(split, idx)
            y = torch.from_numpy(np.asarray(y_all[idx]))
            loss_sum = F.cross_entropy(logits, y, reduction="sum").item()
            correct = (logits.argmax(dim=1) == y).sum().item()
        loss_sum, correct = self.pg.all_sum([loss_sum, correct])
        return {f"{split}_loss": loss_sum / len(y_all), f"{split}_accuracy": correct / len(y_all)}

    def _finish(self, resumed: int | None) -> TrainResult:
        data, last = self.data, len(self.history)
        metrics = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        if self.best.restore(self.model):
            # the best epoch's weights are what the job exports and scores
            kept = self.history[self.best.epoch - 1]
            metrics = {k: v for k, v in kept.items() if k != "epoch"}
            metrics["best_epoch"] = float(self.best.epoch)
            if self.pg.rank == 0:
                self.reporter.log(last, best_epoch=float(self.best.epoch))
        if self.privacy is not None:
            # The run's whole spend (its checkpoints hold every epoch), not the kept epoch's.
            metrics["dp_epsilon"] = dp.spent(self.privacy)
            metrics["dp_delta"] = self.privacy.delta
            metrics["dp_noise_multiplier"] = self.privacy.noise_multiplier
        evaluation = None
        if len(data.test):
            logits = self._predict("test", np.arange(len(data.test)))
            y = torch.from_numpy(np.asarray(data.test.y))
            probabilities = torch.softmax(logits, dim=1).numpy()
            predicted = logits.argmax(dim=1).numpy()
            evaluation = with_fairness(
                evaluate(y.numpy(), predicted, data.classes, probabilities), data, predicted
            )
            if self.privacy is not None:  # the model card tells how it was trained
                evaluation["privacy"] = {
                    "epsilon": metrics["dp_epsilon"],
                    "delta": self.privacy.delta,
                    "max_grad_norm": self.privacy.max_grad_norm,
                    "noise_multiplier": self.privacy.noise_multiplier,
                }
            metrics["test_loss"] = F.cross_entropy(logits, y).item()
            metrics["test_accuracy"] = evaluation["accuracy"]
            if self.pg.rank == 0:
                self.reporter.log(
                    last,
                    test_loss=metrics["test_loss"],
                    test_accuracy=metrics["test_accuracy"],
                )
        split = "test" if len(data.test) else "train"
        rows = np.arange(min(8, len(getattr(data, split))))
        return TrainResult(
            model=self.model.cpu().eval(),
            spec=self.spec,
            params=self.params,
            metrics=metrics,
            evaluation=evaluation,
            history=self.history,
            example_input=self.prepared.batch(split, rows).numpy(),
            resumed_from_epoch=resumed,
        )

    def _snapshot(self) -> dict[str, Any]:
        """The checkpoint after an epoch. Its tensors are the live ones: ``save_checkpoint``
        copies them before it returns (:class:`~nimbus.runtime.reporter.Reporter`)."""
        rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "params": self.params,
            "epoch": len(self.history),
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "best": self.best.state(),
            **({"privacy": dp.state(self.privacy)} if self.privacy is not None else {}),
        }

    def _restore(self, state: dict[str, Any]) -> int:
        """Load a checkpoint into this fresh run; returns the epoch it was taken after."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInput(f"unknown checkpoint format {state.get('format')!r}")
        if state.get("model_name") != self.model_name or state.get("params") != self.params:
            raise InvalidInput("the checkpoint belongs to a run with another model or params")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = [dict(h) for h in state["history"]]
        if "best" in state:
            self.best.load(state["best"])
        if self.privacy is not None:
            dp.load(self.privacy, state.get("privacy") or [])
        if len(self.history) != int(state["epoch"]):
            raise InvalidInput("the checkpoint's history does not match its epoch")
        return int(state["epoch"])


def _optimizer(model: nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer:
    lr, decay = params["lr"], params["weight_decay"]
    if params["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=params["momentum"], weight_decay=decay
        )
    cls = torch.optim.AdamW if params["optimizer"] == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=lr, weight_decay=decay)


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels where torch has them (warn, not fail, where it has not).

    Without torch's filling of every new uninitialised tensor with NaN, which it does in
    deterministic mode unless told not to: a debugging aid that changes no result (kernels
    never read what they have not written) and cost ~5-8% of a CNN's training step on CPU.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling  # type: ignore[attr-defined]
