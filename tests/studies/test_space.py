"""Search spaces: the --param grammar, the JSON form, the model's check, Optuna's view."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nimbus.errors import InvalidInput
from nimbus.studies.space import (
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    Space,
    check_for_model,
    parse_space,
    space_from_dict,
    to_optuna,
)


def test_every_kind_of_parameter_is_read() -> None:
    space = parse_space(
        [
            "lr=loguniform(1e-4,1e-1)",
            "dropout=uniform(0, 0.5)",
            "batch-size=int(16,128,log)",
            "hidden=choice(64,128,256)",
            "optimizer=choice(adam,sgd)",
            "epochs=20",
            "monitor=val_loss",
        ]
    )
    assert space.params == {
        "lr": FloatRange(1e-4, 0.1, log=True),
        "dropout": FloatRange(0.0, 0.5),
        "batch_size": IntRange(16, 128, log=True),
        "hidden": Choice((64, 128, 256)),
        "optimizer": Choice(("adam", "sgd")),
        "epochs": Fixed(20),
        "monitor": Fixed("val_loss"),
    }
    assert space.fixed == {"epochs": 20, "monitor": "val_loss"}
    assert set(space.searched) == {"lr", "dropout", "batch_size", "hidden", "optimizer"}


@pytest.mark.parametrize(
    ("word", "named"),
    [
        ("lr=gauss(0,1)", "unknown distribution 'gauss'"),
        ("lr=uniform(0.1,0.01)", "low 0.1 is not below high 0.01"),
        ("lr=uniform(1,1)", "low 1.0 is not below high 1.0"),
        ("lr=loguniform(0,1)", "a log scale needs a positive low bound"),
        ("lr=loguniform(-1,1)", "a log scale needs a positive low bound"),
        ("n=int(0,10,log)", "a log scale needs a positive low bound"),
        ("n=int(1.5,10)", "'1.5' is not an integer"),
        ("n=int(1,10,linear)", "int(low,high) or int(low,high,log)"),
        ("lr=uniform(a,b)", "'a' is not a number"),
        ("lr=uniform(0,inf)", "is not a finite number"),
        ("lr=uniform(1)", "takes two numbers"),
        ("h=choice()", "at least one option"),
        ("h=choice(1,1.0)", "listed twice"),
        ("lr", "expected NAME=VALUE"),
        ("=3", "expected NAME=VALUE"),
        ("9lr=3", "parameter name '9lr'"),
        ("lr=", "an empty value"),
    ],
)
def test_a_bad_space_is_refused_naming_it(word: str, named: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_space([word, "other=choice(1,2)"])
    assert named in raised.value.message
    assert raised.value.status == 400


def test_a_study_must_search_something_and_name_each_parameter_once() -> None:
    with pytest.raises(InvalidInput, match="no parameter is searched"):
        parse_space(["epochs=5"])
    with pytest.raises(InvalidInput, match="needs parameters"):
        parse_space([])
    with pytest.raises(InvalidInput, match="given twice"):
        parse_space(["batch-size=int(1,4)", "batch_size=8"])


def test_the_json_form_round_trips_and_is_checked_alike() -> None:
    space = parse_space(["lr=loguniform(1e-4,1e-1)", "n=int(1,9)", "h=choice(a,2,true)", "e=3"])
    assert space_from_dict(space.to_dict()) == space
    with pytest.raises(InvalidInput, match="unknown space type 'normal'"):
        space_from_dict({"lr": {"type": "normal", "low": 0, "high": 1}})
    with pytest.raises(InvalidInput, match=r"low 2\.0 is not below high 1\.0"):
        space_from_dict({"lr": {"type": "float", "low": 2, "high": 1}})
    with pytest.raises(InvalidInput, match="is not an integer"):
        space_from_dict({"n": {"type": "int", "low": 1.5, "high": 4}})
    with pytest.raises(InvalidInput, match="not a number, a boolean or a string"):
        space_from_dict({"n": {"type": "choice", "options": [[1]]}, "m": {"x": 1}})


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["width=int(8,64)"], "the mlp model takes none such"),
        (["batch_size=uniform(16,128)"], "takes integers: search it with int(low,high)"),
        (["lr=loguniform(1e-4,100)"], "100.0 is refused"),
        (["epochs=int(0,5)"], "0 is refused"),
        (["optimizer=choice(adam,lion)"], "'lion' is refused"),
        (["lr=uniform(0.1,0.2)", "epochs=0"], "0 is refused"),
    ],
)
def test_a_builtin_model_refuses_what_it_does_not_take(words: list[str], named: str) -> None:
    space = parse_space([*words, "seed=choice(1,2)"])
    with pytest.raises(InvalidInput) as raised:
        check_for_model(space, "mlp")
    assert named in raised.value.message


def test_a_space_the_model_takes_passes_and_a_script_takes_anything() -> None:
    good = parse_space(
        ["lr=loguniform(1e-4,1e-1)", "batch_size=int(16,128,log)", "optimizer=choice(adam,sgd)"]
    )
    check_for_model(good, "mlp")
    check_for_model(good, "cnn")
    check_for_model(parse_space(["width=int(8,64)", "depth=3"]), "train.py")


def test_optuna_gets_the_searched_parameters_only() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_space(["lr=loguniform(1e-4,1e-1)", "n=int(1,9)", "h=choice(a,b)", "e=3"])
    assert to_optuna(space) == {
        "lr": FloatDistribution(1e-4, 0.1, log=True),
        "n": IntDistribution(1, 9),
        "h": CategoricalDistribution(("a", "b")),
    }


_names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
_floats = st.floats(-1e6, 1e6, allow_nan=False)


@given(st.dictionaries(_names, st.tuples(_floats, _floats), min_size=1, max_size=5))
def test_any_float_range_is_kept_or_refused_never_bent(
    ranges: dict[str, tuple[float, float]],
) -> None:
    words = [f"{name}=uniform({lo!r},{hi!r})" for name, (lo, hi) in ranges.items()]
    if all(lo < hi for lo, hi in ranges.values()):
        space = parse_space(words)
        for name, (lo, hi) in ranges.items():
            param = space.params[name]
            assert isinstance(param, FloatRange)
            assert math.isclose(param.low, lo) and math.isclose(param.high, hi)
        assert space_from_dict(space.to_dict()) == space
    else:
        with pytest.raises(InvalidInput, match="is not below high"):
            parse_space(words)


def test_space_is_plain_data() -> None:
    space = Space({"lr": FloatRange(0.1, 0.2)})
    assert space.to_dict() == {"lr": {"type": "float", "low": 0.1, "high": 0.2, "log": False}}
