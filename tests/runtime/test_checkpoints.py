from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbus.errors import InvalidInput
from nimbus.runtime.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes, clone_tree


def _optimizer_state() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_keeps_every_value_and_type() -> None:
    model, optimizer = _optimizer_state()
    state: dict[str, Any] = {
        "epoch": 2,
        "history": [{"loss": 0.5, "acc": float("nan")}],
        "params": {"lr": 0.01, "hidden": [4, 2], "optimizer": "adam", "flag": None},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "gen": torch.Generator().get_state()},
        "scalar": torch.tensor(3.5),
        "tuple": (1, "two"),
    }
    back = checkpoint_from_bytes(checkpoint_to_bytes(state))
    assert back["epoch"] == 2 and back["params"] == state["params"]
    assert back["tuple"] == [1, "two"]
    assert back["history"][0]["loss"] == 0.5 and math.isnan(back["history"][0]["acc"])
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value)
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert back["scalar"].shape == () and back["scalar"].item() == 3.5
    opt = back["optimizer"]
    assert set(opt["state"]) == {0, 1, 2, 3}  # int keys survive
    assert opt["param_groups"][0]["params"] == [0, 1, 2, 3]
    fresh = torch.optim.Adam(model.parameters(), lr=0.01)
    fresh.load_state_dict(opt)
    assert torch.equal(
        fresh.state_dict()["state"][1]["exp_avg"], state["optimizer"]["state"][1]["exp_avg"]
    )


def test_bytes_are_not_pickle() -> None:
    model, _ = _optimizer_state()
    data = checkpoint_to_bytes({"model": model.state_dict()})
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    assert b"nimbus-checkpoint/1" in data[:4096]


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x08" + b"\x00" * 7 + b"{}" * 4])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a Nimbus checkpoint"):
        checkpoint_from_bytes(data)


@pytest.mark.parametrize("value", [object(), {(1, 2): 3}, b"raw"])
def test_unstorable_values_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput):
        checkpoint_to_bytes({"x": value})


def test_clone_tree_is_a_snapshot() -> None:
    weight = torch.zeros(2)
    snap = clone_tree({"w": weight, "nested": [weight]})
    weight += 1
    assert snap["w"].tolist() == [0.0, 0.0] and snap["nested"][0].tolist() == [0.0, 0.0]


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.floats(allow_nan=False)
)
_trees = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(tree=st.dictionaries(st.text(max_size=6), _trees, max_size=4))
def test_any_json_tree_round_trips(tree: dict[str, Any]) -> None:
    assert checkpoint_from_bytes(checkpoint_to_bytes(tree)) == tree
