from __future__ import annotations

from typing import Any

import pytest

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.runtime.hyperparams import validate_params


def test_defaults_are_filled_in() -> None:
    params = validate_params("cnn", Task.IMAGE, {})
    assert params == {
        "epochs": 5,
        "batch_size": 64,
        "lr": 0.001,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "momentum": 0.9,
        "seed": 0,
        "patience": 3,
        "monitor": "val_accuracy",
        "conv_channels": 32,
        "hidden": 128,
    }


def test_cli_strings_are_coerced() -> None:
    raw = {"lr": "0.01", "epochs": "3", "batch-size": "16", "optimizer": "AdamW", "seed": "7"}
    params = validate_params("cnn", "image-classification", raw)
    assert params["lr"] == 0.01 and isinstance(params["lr"], float)
    assert (params["epochs"], params["batch_size"], params["seed"]) == (3, 16, 7)
    assert params["optimizer"] == "adamw"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("64,32", [64, 32]), ("[8, 4, 2]", [8, 4, 2]), ("16", [16]), (16, [16]), ([3, 2], [3, 2])],
)
def test_mlp_hidden_forms(raw: Any, expected: list[int]) -> None:
    assert validate_params("mlp", Task.TABULAR, {"hidden": raw})["hidden"] == expected


def test_text_params() -> None:
    params = validate_params("text", Task.TEXT, {"max_len": "32", "min_freq": 3})
    assert (params["max_len"], params["min_freq"], params["embed_dim"]) == (32, 3, 16)
    assert (params["ngrams"], params["tokenizer"]) == (2, "words")
    seed = validate_params("text", Task.TEXT, {"ngrams": "1", "tokenizer": "alnum"})
    assert (seed["ngrams"], seed["tokenizer"]) == (1, "alnum")
    for bad in ({"ngrams": 4}, {"tokenizer": "bpe"}, {"monitor": "train_loss"}):
        with pytest.raises(InvalidInput):
            validate_params("text", Task.TEXT, bad)


@pytest.mark.parametrize(
    ("model", "task", "raw", "fragment"),
    [
        ("cnn", Task.IMAGE, {"colour": "red"}, "unknown parameter 'colour'"),
        ("cnn", Task.IMAGE, {"dropout": 0.1}, "unknown parameter 'dropout'"),  # mlp-only
        ("cnn", Task.IMAGE, {"lr": "fast"}, "'lr'"),
        ("cnn", Task.IMAGE, {"lr": "0"}, "'lr'"),
        ("cnn", Task.IMAGE, {"lr": "nan"}, "'lr'"),
        ("cnn", Task.IMAGE, {"epochs": "2.5"}, "'epochs'"),
        ("cnn", Task.IMAGE, {"epochs": 0}, "'epochs'"),
        ("cnn", Task.IMAGE, {"epochs": True}, "'epochs'"),
        ("cnn", Task.IMAGE, {"batch_size": -4}, "'batch_size'"),
        ("cnn", Task.IMAGE, {"optimizer": "rmsprop"}, "'optimizer'"),
        ("cnn", Task.IMAGE, {"weight_decay": "2"}, "'weight_decay'"),
        ("mlp", Task.TABULAR, {"dropout": 1.0}, "'dropout'"),
        ("mlp", Task.TABULAR, {"hidden": "64,zero"}, "'hidden"),
        ("mlp", Task.TABULAR, {"hidden": "64,0"}, "'hidden'"),
        ("text", Task.TEXT, {"max_vocab": 2}, "'max_vocab'"),
        ("text", Task.IMAGE, {}, "model 'text' trains on text-classification"),
        ("cnn", Task.TABULAR, {}, "model 'cnn' trains on image-classification"),
        ("resnet", Task.IMAGE, {}, "unknown model 'resnet'"),
        ("cnn", "video", {}, "unknown task"),
    ],
)
def test_invalid_params_name_the_problem(
    model: str, task: Task | str, raw: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_params(model, task, raw)
    assert fragment in info.value.message
    assert info.value.status == 400


def test_duplicate_key_spellings_are_refused() -> None:
    with pytest.raises(InvalidInput, match="given twice"):
        validate_params("cnn", Task.IMAGE, {"batch_size": 8, "batch-size": 16})


def test_error_details_carry_the_key() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_params("mlp", Task.TABULAR, {"dropout": "-0.5"})
    assert info.value.details["key"] == "dropout"
