"""The measures bench/explain.py reports (bench/explain_measures.py), on a model whose true
attributions are known: a linear score of the pixels, for which Integrated Gradients from
black is exact. The curves must rank the true order above its reverse, start and end where
they must, and the randomised copy and the rank correlations must do what their figures
claim. Nothing here trains or serves (the bench itself does that)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from nimbus.explain.options import ExplainOptions

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "bench" / "explain_measures.py"
    spec = importlib.util.spec_from_file_location("bench_explain_measures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Linear(torch.nn.Module):
    """Two classes of grey images (4x4 unless the weights say): class 1's logit is
    ``weights . pixels / 255``."""

    def __init__(self, weights: np.ndarray) -> None:
        super().__init__()
        self.score = torch.nn.Linear(weights.size, 1, bias=False)
        with torch.no_grad():
            self.score.weight.copy_(torch.from_numpy(weights.reshape(1, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = self.score(x.to(torch.float32).flatten(1) / 255.0)
        return torch.cat([torch.zeros_like(one), one], dim=1)


def test_the_true_order_deletes_faster_and_inserts_faster_than_its_reverse(
    bench: ModuleType,
) -> None:
    weights = np.linspace(-2.0, 6.0, 16).astype("f4")
    model = Linear(weights).eval()
    x = np.full((1, 4, 4, 1), 200, dtype=np.uint8)
    targets = np.array([1])
    scores, delta = bench.attributions(model, "image", x, targets, ExplainOptions(steps=64), {})
    assert delta is not None and abs(delta[0]) < 1e-2
    # Exact for a score linear in the pixels (a softmax on top): the biggest weights first.
    assert np.array_equal(np.argsort(-scores.reshape(-1)), np.argsort(-weights))
    deletion, insertion = bench.faithfulness(model, "image", x, targets, scores)
    reverse_del, reverse_ins = bench.faithfulness(model, "image", x, targets, -scores)
    random_del, random_ins = bench.faithfulness(model, "image", x, targets, None)
    assert deletion[0] < random_del[0] < reverse_del[0]
    assert insertion[0] > random_ins[0] > reverse_ins[0]


def test_curves_start_at_the_input_and_end_at_the_baseline(bench: ModuleType) -> None:
    model = Linear(np.ones(16, dtype="f4")).eval()
    x = np.full((4, 4, 1), 255, dtype=np.uint8)
    rng = np.random.default_rng(0)
    positions = np.arange(16)
    scores = rng.random(x.shape)
    deletion, insertion = bench.example_curves(
        model, x, scores, np.zeros_like(x), 1, positions, rng
    )
    # Each pixel moves the logit by 1: the curves are the sigmoid of 16 - k and of k.
    k = np.arange(17)
    sigmoid = 1 / (1 + np.exp(-k.astype(float)))
    assert deletion == pytest.approx(bench.auc(sigmoid[::-1]), abs=1e-6)
    assert insertion == pytest.approx(bench.auc(sigmoid), abs=1e-6)
    assert bench.auc(np.full(9, 0.25)) == pytest.approx(0.25)


def test_a_text_loses_only_its_filled_slots(bench: ModuleType) -> None:
    seen: list[torch.Tensor] = []

    class Counter(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            seen.append(ids.clone())
            filled = (ids != 0).sum(dim=1, keepdim=True).to(torch.float32)
            return torch.cat([torch.zeros_like(filled), filled], dim=1)

    ids = np.array([[5, 7, 9, 0, 0, 0]], dtype=np.int64)
    bench.faithfulness(Counter(), "text", ids, np.array([1]), np.array([[3.0, 1.0, 2.0, 0, 0, 0]]))
    deleted, inserted = seen
    # By attribution: slot 0, then 2, then 1; the padding never moves.
    order = [[5, 7, 9, 0, 0, 0], [0, 7, 9, 0, 0, 0], [0, 7, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert deleted.tolist() == order
    assert inserted.tolist() == [[0] * 6, [5, 0, 0, 0, 0, 0], [5, 0, 9, 0, 0, 0], order[0]]


def test_randomising_resets_the_layers_asked_and_leaves_the_model_alone(bench: ModuleType) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    before = [p.detach().clone() for p in model.parameters()]
    top = list(bench.randomised(model, 1).parameters())
    every = list(bench.randomised(model, None).parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert torch.equal(top[0], before[0]) and not torch.equal(top[2], before[2])
    assert not torch.equal(every[0], before[0]) and not torch.equal(every[2], before[2])


def test_rank_correlations_per_example_over_the_mask(bench: ModuleType) -> None:
    a = np.array([[1.0, -2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = np.array([[10.0, 20.0, -30.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    everything = np.ones_like(a, dtype=bool)
    rho = bench.rank_correlations(a, b, everything)
    assert rho[0] == pytest.approx(-0.2) and np.isnan(rho[1])  # a constant side has no rank
    first_three = np.array([[True, True, True, False]] * 2)
    assert bench.rank_correlations(a, b, first_three)[0] == pytest.approx(1.0)
    assert bench.rank_correlations(a, b, first_three, signed=True)[0] == pytest.approx(-1.0)


def test_from_black_the_pixels_rank_ig_whatever_the_weights_and_smoothgrad_follows_them(
    bench: ModuleType,
) -> None:
    """Why digits miss the randomisation check with Integrated Gradients from black and pass
    it with SmoothGrad: for a linear score, IG's attribution is the pixel's value times its
    weight (times a common factor), so with half the pixels black the |IG| of two unrelated
    weight vectors rank alike; SmoothGrad's is the weight alone (times a common factor)."""
    rng = np.random.default_rng(0)
    model = Linear(rng.normal(size=64).astype("f4")).eval()
    other = bench.randomised(model, None, seed=3)
    x = rng.integers(1, 256, size=(6, 8, 8, 1)).astype("u1")
    x[:, :, :4] = 0  # a black half, as a digit's background
    targets = np.ones(len(x), dtype=np.int64)
    everything = np.ones(x.shape, dtype=bool)
    rho = {}
    for method in ("integrated_gradients", "smoothgrad"):
        options = ExplainOptions(method, steps=16, samples=8)
        trained, _ = bench.attributions(model, "image", x, targets, options, {})
        randomised, _ = bench.attributions(other, "image", x, targets, options, {})
        rho[method] = bench.median_of(bench.rank_correlations(trained, randomised, everything))
    weights = [np.abs(m.score.weight.detach().numpy().reshape(-1)) for m in (model, other)]
    # The two weight vectors' own rank correlation:
    unrelated = bench.rank_correlations(*[w[None] for w in weights], np.ones((1, 64), bool))[0]
    assert rho["smoothgrad"] == pytest.approx(unrelated, abs=1e-9), rho
    assert rho["integrated_gradients"] > 0.5 and rho["integrated_gradients"] > unrelated + 0.5
