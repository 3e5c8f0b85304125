from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nimbus.errors import InvalidDataset, InvalidInput
from nimbus.runtime.checkpoints import checkpoint_from_bytes
from nimbus.runtime.data import DataSplits, Split
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import TrainResult, train
from tests.runtime import synthetic
from tests.runtime.crash import CrashAfter

EPOCH_METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def test_cnn_learns_digits() -> None:
    reporter = MemoryReporter()
    result = train("cnn", synthetic.digits(), {"epochs": 4, "batch_size": 32}, reporter)
    assert result.metrics["test_accuracy"] >= 0.9
    assert result.evaluation is not None and result.evaluation["accuracy"] >= 0.9
    assert len(result.evaluation["confusion_matrix"]) == 10
    bins = result.evaluation["calibration"]["bins"]  # from the test split's probabilities
    assert sum(b["count"] for b in bins) == result.evaluation["support"]
    assert 0 <= result.evaluation["calibration"]["ece"] < 0.2
    assert [step for step, m in reporter.metrics if set(m) >= EPOCH_METRICS] == [1, 2, 3, 4]
    assert reporter.series("test_accuracy") == [result.metrics["test_accuracy"]]
    losses = reporter.series("train_loss")
    assert losses[-1] < losses[0]
    assert reporter.saves == 4 and reporter.progress_calls == 4 * 43  # ceil(1349 / 32)
    assert result.spec["arch_params"]["height"] == 8
    assert result.spec["input"]["datatype"] == "UINT8"
    assert result.spec["preprocessing"]["kind"] == "image"
    assert result.example_input.dtype == np.uint8 and result.example_input.shape[1:] == (8, 8, 1)


def test_text_model_learns_topics() -> None:
    data = synthetic.text()
    result = train("text", data, {}, MemoryReporter())
    assert result.metrics["test_accuracy"] >= 0.9
    prep = result.spec["preprocessing"]
    assert prep["vocab"][:2] == ["<pad>", "<unk>"] and "pizza" in prep["vocab"]
    assert prep["ngrams"] == 2 and any(" " in feature for feature in prep["vocab"])
    assert result.spec["onnx_input"] == {"name": "input", "datatype": "INT64", "shape": [-1, 256]}
    assert result.spec["input"]["datatype"] == "BYTES"
    seed = {"ngrams": 1, "tokenizer": "alnum", "max_len": 64, "min_freq": 1, "lr": 0.05}
    words = train("text", data, {**seed, "epochs": 8, "batch_size": 16}, MemoryReporter())
    assert words.metrics["test_accuracy"] >= 0.9
    assert not any(" " in feature for feature in words.spec["preprocessing"]["vocab"])


class _Snapshots(MemoryReporter):
    """Keeps every epoch's weights, to compare with what a run ends with."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[dict[str, torch.Tensor]] = []

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)  # the trainer's tensors are live: keep what was stored
        assert self.checkpoint is not None
        self.weights.append(checkpoint_from_bytes(self.checkpoint)["model"])


def _contrary_val(data: DataSplits) -> DataSplits:
    """The val split with every label moved to the next class: the better the model learns
    the train split, the higher its val loss."""
    shifted = Split(data.val.x, (data.val.y + 1) % len(data.classes))
    return DataSplits(data.task, data.classes, data.train, shifted, data.test)


def test_early_stopping_keeps_the_best_epochs_weights() -> None:
    data = _contrary_val(synthetic.tabular())
    reporter = _Snapshots()
    params = {"epochs": 20, "patience": 2, "monitor": "val_loss", "lr": 0.01}
    result = train("mlp", data, params, reporter)
    val_loss = reporter.series("val_loss")
    assert val_loss == sorted(val_loss) and len(val_loss) == 3  # rose: stopped after 1 + 2
    assert result.metrics["best_epoch"] == 1.0 and reporter.series("best_epoch") == [1.0]
    assert result.metrics["val_loss"] == val_loss[0]
    kept = result.model.state_dict()
    for key, value in reporter.weights[0].items():
        assert torch.equal(kept[key], value), key
    assert not torch.equal(kept["layers.0.weight"], reporter.weights[-1]["layers.0.weight"])

    never = train("mlp", data, {**params, "patience": 0, "epochs": 4}, MemoryReporter())
    assert len(never.history) == 4 and never.metrics["best_epoch"] == 1.0


def test_early_stopping_resumes_where_it_stopped() -> None:
    data = _contrary_val(synthetic.tabular())
    params = {"epochs": 20, "patience": 2, "monitor": "val_loss"}
    straight = train("mlp", data, params, MemoryReporter())
    crashed = CrashAfter(2)
    with pytest.raises(KeyboardInterrupt):
        train("mlp", data, params, crashed)
    resumed = train("mlp", data, params, MemoryReporter(checkpoint=crashed.checkpoint))
    assert resumed.history == straight.history and len(resumed.history) == 3
    assert resumed.metrics == straight.metrics
    _assert_same_weights(resumed, straight)


def test_mlp_learns_blobs_with_missing_values() -> None:
    result = train("mlp", synthetic.tabular(), {"epochs": 6, "batch_size": 32}, MemoryReporter())
    assert result.metrics["test_accuracy"] >= 0.9
    prep = result.spec["preprocessing"]
    assert prep["features"] == ["a", "b", "c", "d", "e"]
    assert prep["std"][3] > 100  # statistics of the raw, unscaled column
    assert result.spec["arch_params"]["hidden"] == [128, 64]


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_same_seed_same_run(optimizer: str) -> None:
    params = {"epochs": 2, "batch_size": 8, "optimizer": optimizer, "seed": 3}
    first = train("cnn", synthetic.tiny_images(), params, MemoryReporter())
    second = train("cnn", synthetic.tiny_images(), params, MemoryReporter())
    assert first.history == second.history
    _assert_same_weights(first, second)
    other = train("cnn", synthetic.tiny_images(), {**params, "seed": 4}, MemoryReporter())
    assert other.history != first.history


@pytest.mark.parametrize(
    ("model", "data", "extra"),
    [
        ("cnn", synthetic.tiny_images, {"optimizer": "adam"}),
        ("mlp", synthetic.tabular, {"optimizer": "sgd", "dropout": 0.5}),  # dropout draws RNG
        ("text", synthetic.text, {"optimizer": "adamw", "weight_decay": 0.01}),
    ],
)
def test_resume_is_bit_identical(model: str, data: Any, extra: dict[str, Any]) -> None:
    params = {"epochs": 3, "batch_size": 8, **extra}
    straight = train(model, data(), params, MemoryReporter())

    crashed = CrashAfter(2)
    with pytest.raises(KeyboardInterrupt):
        train(model, data(), params, crashed)
    assert checkpoint_from_bytes(crashed.checkpoint or b"")["epoch"] == 2
    resumed_reporter = MemoryReporter(checkpoint=crashed.checkpoint)
    resumed = train(model, data(), params, resumed_reporter)

    assert resumed.resumed_from_epoch == 2
    assert [step for step, m in resumed_reporter.metrics if "train_loss" in m] == [3]
    assert resumed.history == straight.history
    assert resumed.metrics == straight.metrics
    _assert_same_weights(resumed, straight)


def test_finished_checkpoint_only_evaluates() -> None:
    reporter = MemoryReporter()
    first = train("cnn", synthetic.tiny_images(), {"epochs": 1}, reporter)
    again = train("cnn", synthetic.tiny_images(), {"epochs": 1}, reporter)
    assert again.resumed_from_epoch == 1 and again.metrics == first.metrics
    assert reporter.saves == 1


def test_checkpoint_of_another_run_is_refused() -> None:
    reporter = MemoryReporter()
    train("cnn", synthetic.tiny_images(), {"epochs": 1}, reporter)
    with pytest.raises(InvalidInput, match="another model or params"):
        train("cnn", synthetic.tiny_images(), {"epochs": 1, "lr": 0.1}, reporter)


def test_memory_mapped_splits(tmp_path: Path) -> None:
    data = synthetic.tiny_images()
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        np.save(tmp_path / f"{name}_x.npy", split.x)
        np.save(tmp_path / f"{name}_y.npy", split.y)
    mapped = DataSplits.load(tmp_path, data.task, data.classes)
    assert isinstance(mapped.train.x, np.memmap)
    params = {"epochs": 1, "batch_size": 4}
    from_disk = train("cnn", mapped, params, MemoryReporter())
    in_memory = train("cnn", data, params, MemoryReporter())
    assert from_disk.history == in_memory.history


def test_empty_val_and_test_splits_are_allowed() -> None:
    data = synthetic.tiny_images()
    empty = Split(data.train.x[:0], data.train.y[:0])
    bare = DataSplits(data.task, data.classes, data.train, empty, empty)
    result = train("cnn", bare, {"epochs": 1}, MemoryReporter())
    assert set(result.metrics) == {"train_loss", "train_accuracy"}
    assert result.evaluation is None and len(result.example_input) == 8


def test_bad_data_is_refused() -> None:
    data = synthetic.tiny_images()
    with pytest.raises(InvalidDataset, match="labels outside"):
        DataSplits(data.task, ["one", "two"], data.train, data.val, data.test)
    with pytest.raises(InvalidInput, match="trains on"):
        train("text", data, {}, MemoryReporter())
    table = synthetic.tabular(missing=False)
    with pytest.raises(InvalidDataset, match="feature names"):
        DataSplits(table.task, table.classes, table.train, table.val, table.test, ["a"])
    with pytest.raises(InvalidInput, match="batch_size"):
        train("cnn", data, {"batch_size": 0}, MemoryReporter())


def _assert_same_weights(a: TrainResult, b: TrainResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
