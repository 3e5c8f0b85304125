"""Attributions on small built-in models trained here on data whose answer lies in a known
place (one feature, one corner of the image, one word): the explanation must find that
place, have the input's shape, and (Integrated Gradients) add up to the change it explains."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nimbus.errors import InvalidInput
from nimbus.explain.attributions import explain
from nimbus.explain.options import ExplainOptions, parse_options
from nimbus.explain.render import overlay_png, word_scores
from nimbus.modelformat.text import TextEncoder
from nimbus.runtime.architectures import build_model


def fit(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> None:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.03)
    module.train()
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        optimiser.step()
    module.eval()


@pytest.fixture(scope="module")
def tabular() -> tuple[torch.nn.Module, np.ndarray, dict[str, Any]]:
    """Four features; the class is whether feature 2 is above its mean (20)."""
    rng = np.random.default_rng(0)
    x = rng.normal([0.0, 5.0, 20.0, -3.0], [1.0, 2.0, 4.0, 1.0], size=(400, 4)).astype("f4")
    y = (x[:, 2] > 20.0).astype("i8")
    prep = {"kind": "tabular", "mean": [0.0, 5.0, 20.0, -3.0], "std": [1.0, 2.0, 4.0, 1.0]}
    torch.manual_seed(0)
    module = build_model(
        {
            "architecture": "mlp",
            "arch_params": {"in_features": 4, "num_classes": 2, "hidden": [16]},
            "preprocessing": prep,
        }
    )
    fit(module, torch.from_numpy(x), torch.from_numpy(y))
    return module, x[:8], prep


@pytest.fixture(scope="module")
def image() -> tuple[torch.nn.Module, np.ndarray, dict[str, Any]]:
    """8x8 grey images of noise; class 1 when the top-left 3x3 corner is bright."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 100, size=(300, 8, 8, 1)).astype("u1")
    y = rng.integers(0, 2, size=300)
    x[y == 1, :3, :3, 0] = 250
    prep = {"kind": "image", "scale": 1 / 255, "mean": [0.2], "std": [0.3]}
    torch.manual_seed(0)
    module = build_model(
        {
            "architecture": "cnn",
            "arch_params": {
                "in_channels": 1,
                "height": 8,
                "width": 8,
                "num_classes": 2,
                "conv_channels": 8,
                "hidden": 16,
            },
            "preprocessing": prep,
        }
    )
    fit(module, torch.from_numpy(x), torch.from_numpy(y.astype("i8")), steps=40)
    return module, x[y == 1][:4], prep


def test_shapley_and_integrated_gradients_find_the_feature_that_decides(
    tabular: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    module, x, prep = tabular
    for method in ("shapley", "integrated_gradients"):
        found = explain(module, "tabular", x, ExplainOptions(method=method), prep)
        assert found.attributions.shape == x.shape and found.attributions.dtype == np.float32
        share = np.abs(found.attributions).mean(axis=0)
        assert share.argmax() == 2 and share[2] > 3 * np.delete(share, 2).max(), share
        assert np.array_equal(found.targets, found.probabilities.argmax(axis=1))
    again = explain(module, "tabular", x, ExplainOptions(method="shapley"), prep)
    first = explain(module, "tabular", x, ExplainOptions(method="shapley"), prep)
    assert np.array_equal(again.attributions, first.attributions)  # seeded


def test_integrated_gradients_adds_up_to_the_change_it_explains(
    tabular: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    """Completeness: attributions sum to f(x) - f(baseline) (here: the feature means)."""
    module, x, prep = tabular
    found = explain(module, "tabular", x, ExplainOptions("integrated_gradients", target=1), prep)
    assert found.delta is not None and np.abs(found.delta).max() < 1e-2
    with torch.no_grad():
        mean = torch.tensor([prep["mean"]], dtype=torch.float32)
        at_baseline = torch.softmax(module(mean), -1)[0, 1].item()
    change = found.probabilities[:, 1] - at_baseline
    assert np.allclose(found.attributions.sum(axis=1), change, atol=1e-2)
    assert (found.targets == 1).all()


def test_an_image_explanation_lights_the_corner_that_decides(
    image: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    module, x, prep = image
    for method in ("integrated_gradients", "occlusion", "smoothgrad"):
        found = explain(module, "image", x, ExplainOptions(method, target=1, window=3), prep)
        assert found.attributions.shape == x.shape
        mass = np.abs(found.attributions).sum(axis=(0, 3))
        corner = mass[:3, :3].sum() / 9
        rest = (mass.sum() - mass[:3, :3].sum()) / 55
        assert corner > 3 * rest, (method, mass.round(3))
    # A sharp rise from the black baseline (the corner lit): more steps for the integral.
    ig = explain(module, "image", x, ExplainOptions(target=1, steps=160), prep)
    assert ig.delta is not None and np.abs(ig.delta).max() < 1e-2
    mean_baseline = explain(module, "image", x, ExplainOptions(baseline="mean"), prep)
    assert not np.array_equal(mean_baseline.attributions, ig.attributions)


def test_smoothgrad_is_seeded_and_leaves_the_random_state_alone(
    image: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    module, x, prep = image
    options = ExplainOptions("smoothgrad", target=1, samples=8)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    first = explain(module, "image", x, options, prep)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = explain(module, "image", x, options, prep)
    assert np.array_equal(first.attributions, again.attributions) and first.delta is None
    # Signed: the corner that makes class 1 raises its probability, so mostly positive.
    assert first.attributions[:, :3, :3].mean() > 0
    more = explain(module, "image", x, ExplainOptions("smoothgrad", target=1, samples=9), prep)
    assert not np.array_equal(first.attributions, more.attributions)


def test_attributions_run_numpy_blas_on_one_thread(
    image: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    """Captum's Gauss-Legendre points are an eigenvalue problem in numpy: with the BLAS on
    every core, a busy two-core host spent 1 s on them at 256 steps instead of 30 ms."""
    from threadpoolctl import threadpool_info, threadpool_limits

    module, x, prep = image
    seen: list[int] = []

    def blas_threads() -> int:
        pools = threadpool_info()
        return max(int(pool["num_threads"]) for pool in pools if pool["user_api"] == "blas")

    class Probe(torch.nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            seen.append(blas_threads())
            out: torch.Tensor = module(batch)
            return out

    with threadpool_limits(limits=2, user_api="blas"):
        for method in ("integrated_gradients", "occlusion"):
            seen.clear()
            explain(Probe(), "image", x[:1], ExplainOptions(method, steps=8), prep)
            # The prediction explained comes first, as is; the attributions on one thread.
            assert len(seen) > 1 and seen[0] == 2 and set(seen[1:]) == {1}, (method, seen)
        assert blas_threads() == 2  # restored


def test_a_text_explanation_scores_the_word_that_decides() -> None:
    vocab = ("<pad>", "<unk>", "the", "film", "was", "great", "dull", "the film")
    encoder = TextEncoder(vocab=vocab, max_len=8, ngrams=2)
    texts = ["the film was great", "the film was dull", "great", "dull film", "was great"]
    labels = [1, 0, 1, 0, 1]
    ids = torch.from_numpy(encoder.encode(texts * 20))
    torch.manual_seed(0)
    module = build_model(
        {
            "architecture": "text",
            "arch_params": {"vocab_size": len(vocab), "embed_dim": 8, "num_classes": 2},
            "preprocessing": encoder.preprocessing(),
        }
    )
    fit(module, ids, torch.tensor(labels * 20))
    words = encoder.words("The film was GREAT")
    row = encoder.encode(["The film was GREAT"])
    found = explain(module, "text", row, ExplainOptions(target=1, steps=64))
    assert found.attributions.shape == row.shape
    assert found.delta is not None and np.abs(found.delta).max() < 1e-2
    # Padding slots carry nothing; the words' scores add up to the slots'.
    assert np.all(found.attributions[0, row[0] == 0] == 0)
    scores = word_scores(encoder, words, found.attributions[0])
    assert [w for w, _ in scores] == ["the", "film", "was", "great"]
    assert max(scores, key=lambda ws: ws[1])[0] == "great"
    assert sum(s for _, s in scores) == pytest.approx(float(found.attributions[0].sum()))


def test_the_trace_says_which_words_each_slot_stands_for() -> None:
    encoder = TextEncoder(vocab=("<pad>", "<unk>", "a", "b", "a b"), max_len=4, ngrams=2)
    words = encoder.words("a b zz a")
    assert encoder.trace(words) == [(0,), (1,), (0, 1), (2,)]  # "zz" is <unk>; cut at 4
    assert encoder.encode(["a b zz a"]).tolist() == [[2, 3, 4, 1]]


def test_bad_options_are_refused_naming_the_field() -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("image", {"method": "shapley"}, "does not explain image inputs"),
        ("text", {"method": "shapley"}, "does not explain text inputs"),
        ("text", {"method": "smoothgrad"}, "(one of integrated_gradients, occlusion)"),
        ("image", {"steps": 0}, "steps must be an integer from 1 to 256"),
        ("image", {"steps": 10_000}, "steps must be an integer"),
        ("image", {"steps": True}, "steps must be an integer"),
        ("image", {"target": 10}, "target 10 is neither a class (c0, c1, c2, c3, c4, c5"),
        ("image", {"target": "c10"}, "nor a class index from 0 to 9"),
        ("image", {"baseline": "grey"}, "baseline 'grey' is not one of black, white, mean"),
        ("image", {"baseline": 300}, "or a pixel value 0..255"),
        ("tabular", {"baseline": 3.0}, "baseline 3.0 is not one of mean, zeros"),
        ("tabular", {"samples": 100_000}, "samples must be an integer from 1 to 200"),
        ("image", {"colour": "red"}, "unknown explain parameter 'colour'"),
        ("audio", {}, "no explanation for 'audio' inputs"),
    ]
    for kind, given, message in cases:
        with pytest.raises(InvalidInput) as caught:
            parse_options(kind, given, classes=[f"c{i}" for i in range(10)])
        assert message in caught.value.message, (given, caught.value.message)
    classes = ["cat", "dog"]
    assert parse_options("image", {"baseline": 128, "window": 5}, classes) == ExplainOptions(
        baseline=128.0, window=5
    )
    assert parse_options("image", {"target": "dog"}, classes).target == 1


def test_the_overlay_is_red_where_the_evidence_is() -> None:
    picture = np.full((6, 6, 1), 100, dtype=np.uint8)
    attributions = np.zeros((6, 6, 1), dtype=np.float32)
    attributions[0, 0, 0], attributions[5, 5, 0] = 1.0, -1.0
    png = Image.open(io.BytesIO(overlay_png(picture, attributions)))
    assert png.size == (6, 6) and png.mode == "RGB"
    red, blue, plain = png.getpixel((0, 0)), png.getpixel((5, 5)), png.getpixel((3, 3))
    assert plain == (100, 100, 100)
    assert isinstance(red, tuple) and red[0] > 150 and red[2] < 60
    assert isinstance(blue, tuple) and blue[2] > 150 and blue[0] < 60
    with pytest.raises(ValueError, match="differ"):
        overlay_png(picture, attributions[:3])


def test_a_forward_function_gets_the_methods_that_need_no_gradients(
    image: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
    tabular: tuple[torch.nn.Module, np.ndarray, dict[str, Any]],
) -> None:
    """A model served from its ONNX graph alone is a function from inputs to
    probabilities: occlusion and Shapley sampling through it equal the module's."""
    for module, x, prep, kind, method in (
        (*image, "image", "occlusion"),
        (*tabular, "tabular", "shapley"),
    ):

        def forward(batch: np.ndarray, module: torch.nn.Module = module) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(module(torch.from_numpy(batch)), -1).numpy()

        options = ExplainOptions(method, window=3)
        through = explain(forward, kind, x, options, prep)
        direct = explain(module, kind, x, options, prep)
        assert np.allclose(through.attributions, direct.attributions, atol=1e-5)
        assert explain(forward, kind, x, ExplainOptions(window=3), prep).attributions.shape == (
            x.shape
        )
        with pytest.raises(InvalidInput, match=f"only its ONNX graph: use {method}"):
            explain(forward, kind, x, ExplainOptions("integrated_gradients"), prep)
        if kind == "image":
            with pytest.raises(InvalidInput, match="smoothgrad needs the model's PyTorch"):
                explain(forward, kind, x, ExplainOptions("smoothgrad"), prep)
