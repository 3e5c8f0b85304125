"""Differentially private training of the built-ins (DP-SGD, with Opacus).

Asked for with ``dp_epsilon`` (and ``dp_delta``, ``dp_max_grad_norm``): every example's
gradient is clipped to ``dp_max_grad_norm``, Gaussian noise is added to their sum, and the
batches are Poisson samples (each train example in with probability ``batch_size / n``,
drawn from the run's seeded generator) — the sampling the accountant's bound assumes.
The noise is the least that keeps the whole run (``epochs`` epochs of ``n / batch_size``
steps) within (ε, δ) by Opacus's RDP accountant; the ε spent so far is reported after every
epoch, and a run stops before an epoch that would take it past the ε asked for (one resumed
from a checkpoint carries the accountant's history with it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nimbus.errors import InvalidInput

DEFAULT_DELTA = 1e-5
DEFAULT_MAX_GRAD_NORM = 1.0


@dataclass
class Privacy:
    epsilon: float  # the budget asked for
    delta: float
    max_grad_norm: float
    sample_rate: float  # Poisson sampling: each train example's chance to be in a batch
    steps_per_epoch: int
    expected_batch: int  # sample_rate x the train examples: the batch_size asked for
    noise_multiplier: float
    accountant: Any  # opacus.accountants.RDPAccountant


def plan(params: dict[str, Any], n_train: int) -> Privacy | None:
    """The DP-SGD plan for a run, or None when ``dp_epsilon`` is not set."""
    epsilon = params.get("dp_epsilon")
    if epsilon is None:
        return None
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    delta = float(params.get("dp_delta") or DEFAULT_DELTA)
    clip = float(params.get("dp_max_grad_norm") or DEFAULT_MAX_GRAD_NORM)
    batch = min(int(params["batch_size"]), n_train)
    rate = batch / n_train
    steps = max(1, math.ceil(n_train / batch))
    with quiet():
        try:
            sigma = get_noise_multiplier(
                target_epsilon=float(epsilon),
                target_delta=delta,
                sample_rate=rate,
                steps=steps * int(params["epochs"]),
                accountant="rdp",
            )
        except ValueError as exc:  # the budget is out of reach at any noise
            raise InvalidInput(
                f"dp_epsilon {epsilon} cannot be reached with dp_delta {delta}: {exc}",
                key="dp_epsilon",
            ) from None
    return Privacy(float(epsilon), delta, clip, rate, steps, batch, float(sigma), RDPAccountant())


def make_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, privacy: Privacy
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The module to train through (per-example gradients) and the DP optimizer (clip,
    noise, count the step in the accountant)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    net = GradSampleModule(model, loss_reduction="mean")
    dp = DPOptimizer(
        optimizer,
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=privacy.expected_batch,
        loss_reduction="mean",
    )
    dp.attach_step_hook(privacy.accountant.get_optimizer_hook_fn(sample_rate=privacy.sample_rate))
    return net, dp


def spent(privacy: Privacy) -> float:
    """The ε spent so far (0 before the first step)."""
    if not privacy.accountant.history:
        return 0.0
    with quiet():
        return float(privacy.accountant.get_epsilon(privacy.delta))


def next_epoch_fits(privacy: Privacy) -> bool:
    """Whether one more epoch's steps keep the run within the ε asked for."""
    from opacus.accountants import RDPAccountant

    ahead = RDPAccountant()
    ahead.history = [
        *privacy.accountant.history,
        (privacy.noise_multiplier, privacy.sample_rate, privacy.steps_per_epoch),
    ]
    with quiet():
        return float(ahead.get_epsilon(privacy.delta)) <= privacy.epsilon


def poisson_batches(n: int, privacy: Privacy, generator: torch.Generator) -> Iterator[np.ndarray]:
    """One epoch's batches: each of its steps takes every example with probability
    ``sample_rate``, independently (an empty draw is skipped: it releases nothing)."""
    for _ in range(privacy.steps_per_epoch):
        chosen = torch.rand(n, generator=generator) < privacy.sample_rate
        idx = torch.nonzero(chosen).flatten().numpy()
        if len(idx):
            yield idx


def state(privacy: Privacy) -> list[list[float]]:
    """The accountant's history, for a checkpoint."""
    return [[float(s), float(q), int(k)] for s, q, k in privacy.accountant.history]


def load(privacy: Privacy, history: list[list[float]]) -> None:
    privacy.accountant.history = [(float(s), float(q), int(k)) for s, q, k in history]


@contextmanager
def quiet() -> Iterator[None]:
    """Opacus's and torch's notes on what they do by design here (per-example gradient
    hooks firing on inputs that need none; the RDP bound at the largest order)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the")
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        yield
