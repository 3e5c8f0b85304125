"""Differentially private training (DP-SGD with Opacus) of a built-in on scikit-learn's
bundled digits: the ε spent is reported every epoch and never passes the ε asked for, the
model still learns, a resumed run spends exactly what an unbroken one does, and bad privacy
parameters are refused naming them."""

from __future__ import annotations

import pytest

from nimbus.errors import InvalidInput
from nimbus.runtime import privacy as dp
from nimbus.runtime.hyperparams import validate_params
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train
from tests.runtime import synthetic
from tests.runtime.crash import CrashAfter

SMALL_CNN = {"conv_channels": 8, "hidden": 32, "batch_size": 64, "lr": 0.01, "patience": 0}


@pytest.mark.slow
def test_a_private_run_stays_within_its_budget_and_still_learns() -> None:
    data = synthetic.digits(limit=800)
    params = {**SMALL_CNN, "epochs": 3, "dp_epsilon": 8}
    reporter = MemoryReporter()
    result = train("cnn", data, params, reporter)
    spent = reporter.series("dp_epsilon")
    assert len(spent) == 3 and spent == sorted(spent) and spent[0] > 0
    assert spent[-1] <= 8.0 and result.metrics["dp_epsilon"] == spent[-1]
    assert result.metrics["dp_delta"] == 1e-5 and result.metrics["dp_noise_multiplier"] > 0.3
    assert result.metrics["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    assert result.params["dp_epsilon"] == 8.0
    assert result.evaluation is not None  # the model card reads how it was trained
    assert result.evaluation["privacy"]["epsilon"] == spent[-1]

    # A run killed after its first epoch and resumed spends what an unbroken one does.
    crashed = CrashAfter(1)
    with pytest.raises(KeyboardInterrupt):
        train("cnn", data, params, crashed)
    resumed = train("cnn", data, params, MemoryReporter(checkpoint=crashed.checkpoint))
    assert resumed.metrics["dp_epsilon"] == pytest.approx(result.metrics["dp_epsilon"])
    assert resumed.history == result.history


def test_the_plan_spends_the_budget_over_the_epochs_and_stops_before_passing_it() -> None:
    params = validate_params(
        "mlp", "tabular-classification", {"epochs": 4, "batch_size": 50, "dp_epsilon": 2}
    )
    plan = dp.plan(params, n_train=1000)
    assert plan is not None
    assert plan.sample_rate == 0.05 and plan.steps_per_epoch == 20 and plan.expected_batch == 50
    for _ in range(4):
        assert dp.next_epoch_fits(plan)
        plan.accountant.history.append((plan.noise_multiplier, plan.sample_rate, 20))
    assert 1.9 < dp.spent(plan) <= 2.0
    assert not dp.next_epoch_fits(plan)  # a fifth epoch would pass ε = 2
    # More noise for a smaller budget.
    tight = dp.plan({**params, "dp_epsilon": 0.5}, n_train=1000)
    assert tight is not None and tight.noise_multiplier > plan.noise_multiplier
    assert dp.plan({**params, "dp_epsilon": None}, n_train=1000) is None


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"dp_epsilon": "0"}, "'dp_epsilon' = '0': Input should be greater than 0"),
        ({"dp_epsilon": "8", "dp_delta": "1"}, "'dp_delta' = '1': Input should be less than 1"),
        ({"dp_delta": "1e-6"}, "dp_delta and dp_max_grad_norm need dp_epsilon"),
        ({"dp_max_grad_norm": "2"}, "need dp_epsilon"),
        ({"dp_epsilon": "8", "dp_max_grad_norm": "-1"}, "'dp_max_grad_norm' = '-1'"),
    ],
)
def test_bad_privacy_parameters_are_refused_naming_them(
    given: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_params("cnn", "image-classification", given)


def test_params_without_privacy_are_unchanged() -> None:
    """A run that asks for no privacy has no dp_ keys: its checkpoints' params compare
    equal to those written before DP existed."""
    params = validate_params("mlp", "tabular-classification", {"epochs": 2})
    assert not any(k.startswith("dp_") for k in params)
