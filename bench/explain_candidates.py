"""Which image attribution setting passes issue 13's targets together on digits: the
candidates tried for the model-randomisation check (Adebayo et al. 2018), measured with
bench/explain.py's own measures; prints figures, asserts nothing.

Integrated Gradients from black misses the check on the ink pixels (|attr| 0.40) because its
attribution is the pixel's value times the path's mean gradient. Tried here, each with
Captum on the same trained digits cnn (bench/explain.py's model: ``train``, exported,
rebuilt), the same held-out digits and targets:

- IG (32 steps) from other baselines (Sturmfels et al. 2020): one image of uniform noise
  (seeded, three seeds), a Gaussian blur of the input (sigma 2 and 4 pixels), the average
  of IG from K uniform-noise images (K x steps = 32), the average of IG from K training
  images (deterministic Expected Gradients, Erion et al. 2021), and Captum's GradientShap
  (Expected Gradients sampled: 32 draws over 64 training images);
- NoiseTunnel (SmoothGrad) around IG from black (8 copies x 4 steps, noise 64/255);
- the plain gradient (Saliency) and SmoothGrad over it (what ``method=smoothgrad`` serves).

Per candidate: deletion and insertion AUC against random orders (ratio of the means; the
targets <= 0.7 and >= 1.3), the median Spearman correlation of |attr| (and signed) between
the trained model and the same with all layers re-initialised (target < 0.3), all pixels
and ink pixels, and with only the top layer re-initialised; the explanation's milliseconds
per digit here (one thread). Every baseline is the same for the trained and the randomised
model (a fresh noise image per call would decorrelate them whatever the model: printed
too, IG from two noise seeds on the same trained model).

Run: .venv/bin/python bench/explain_candidates.py [--examples N] (about 1.5 minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from explain_measures import faithfulness, median_of, randomised, rank_correlations
from scipy.ndimage import gaussian_filter

from explain import digit_data, load, trained

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def probability(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.softmax(module(x).float(), dim=-1)


def noise_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, 8, 8, 1), generator=generator) * 255.0


def ig(baseline: Callable[[torch.Tensor], torch.Tensor], steps: int = 32) -> Method:
    from captum.attr import IntegratedGradients

    def run(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        found: torch.Tensor = IntegratedGradients(probability(module)).attribute(
            x, baselines=baseline(x), target=t, n_steps=steps
        )
        return found

    return run


def ig_averaged(baselines: torch.Tensor, steps: int) -> Method:
    """IG from each of ``baselines`` in turn, averaged."""
    from captum.attr import IntegratedGradients

    def run(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k, n = len(baselines), len(x)
        found: torch.Tensor = IntegratedGradients(probability(module)).attribute(
            x.repeat_interleave(k, 0),
            baselines=baselines.repeat(n, 1, 1, 1),
            target=t.repeat_interleave(k, 0),
            n_steps=steps,
        )
        return found.view(n, k, *x.shape[1:]).mean(dim=1)

    return run


def gradient_shap(background: torch.Tensor, samples: int) -> Method:
    from captum.attr import GradientShap

    def run(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        found: torch.Tensor = GradientShap(probability(module)).attribute(
            x, baselines=background, target=t, n_samples=samples
        )
        return found

    return run


def smooth_ig(copies: int, noise: float, steps: int) -> Method:
    from captum.attr import IntegratedGradients, NoiseTunnel

    def run(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        found: torch.Tensor = NoiseTunnel(IntegratedGradients(probability(module))).attribute(
            x,
            baselines=torch.zeros_like(x),
            target=t,
            n_steps=steps,
            nt_type="smoothgrad",
            nt_samples=copies,
            stdevs=noise,
        )
        return found

    return run


def smoothgrad(copies: int, noise: float) -> Method:
    from captum.attr import NoiseTunnel, Saliency

    def run(module: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        if copies == 0:
            plain: torch.Tensor = Saliency(probability(module)).attribute(x, target=t, abs=False)
            return plain
        found: torch.Tensor = NoiseTunnel(Saliency(probability(module))).attribute(
            x, target=t, nt_type="smoothgrad", nt_samples=copies, stdevs=noise, abs=False
        )
        return found

    return run


def fixed(image: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: image.expand_as(x).clone()


def blurred(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def blur(x: torch.Tensor) -> torch.Tensor:
        out = gaussian_filter(x.numpy(), sigma=(0, sigma, sigma, 0))
        return torch.from_numpy(out.astype(np.float32))

    return blur


def candidates(train_x: np.ndarray) -> dict[str, Method]:
    picked = np.random.default_rng(0).choice(len(train_x), 64, replace=False)
    background = torch.from_numpy(train_x[picked].astype(np.float32))
    return {
        "IG from black (served default)": ig(torch.zeros_like),
        **{f"IG from uniform noise, seed {s}": ig(fixed(noise_images(1, s)[0])) for s in range(3)},
        "IG from the input blurred, sigma 2": ig(blurred(2.0)),
        "IG from the input blurred, sigma 4": ig(blurred(4.0)),
        "IG from 4 noise images x 8 steps": ig_averaged(noise_images(4, 0), 8),
        "IG from 8 noise images x 4 steps": ig_averaged(noise_images(8, 0), 4),
        "IG from 32 noise images x 1 step": ig_averaged(noise_images(32, 0), 1),
        "IG from 8 training digits x 4 steps": ig_averaged(background[:8], 4),
        "IG from 32 training digits x 1 step": ig_averaged(background[:32], 1),
        "GradientShap, 32 draws, 64 digits": gradient_shap(background, 32),
        "SmoothGrad around IG, 8 x 4 steps": smooth_ig(8, 64.0, 4),
        "gradient (Saliency)": smoothgrad(0, 0.0),
        "SmoothGrad, 25 copies (served)": smoothgrad(25, 0.15 * 255),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--examples", type=int, default=179, help="held-out digits")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load before: {load()}")
    data = digit_data()
    with tempfile.TemporaryDirectory(prefix="nimbus-explain-candidates-") as tmp:
        module, _, _ = trained("cnn", data, {}, Path(tmp))
    x = np.ascontiguousarray(data.test.x[: args.examples])
    with torch.no_grad():
        targets = probability(module)(torch.from_numpy(x)).argmax(-1).numpy()
    others = {"all layers": randomised(module, None), "top layer": randomised(module, 1)}
    masks = {"all": np.ones(x.shape, dtype=bool), "ink": x != 0}

    def attributions(method: Method, model: torch.nn.Module) -> np.ndarray:
        out = np.zeros(x.shape, dtype=np.float32)
        for target in np.unique(targets):
            rows = np.flatnonzero(targets == target)
            batch = torch.from_numpy(x[rows].astype(np.float32))
            chosen = torch.full((len(rows),), int(target))
            out[rows] = method(model, batch, chosen).detach().numpy()
        return out

    random_del, random_ins = faithfulness(module, "image", x, targets, None)
    print(f"\n{len(x)} held-out digits; |attr| (signed) rank correlation, medians; target < 0.3")
    head = f"  {'candidate':38} {'del':>5} {'ins':>5} {'all pixels':>14} {'ink pixels':>14}"
    print(head + f" {'top layer':>9} {'ms':>5}")
    for name, method in candidates(data.train.x).items():
        started = time.perf_counter()
        found = attributions(method, module)
        ms = (time.perf_counter() - started) / len(x) * 1e3
        deletion, insertion = faithfulness(module, "image", x, targets, found)
        again = {label: attributions(method, other) for label, other in others.items()}
        rho = {
            (over, signed): median_of(rank_correlations(found, again["all layers"], m, signed))
            for over, m in masks.items()
            for signed in (False, True)
        }
        top = median_of(rank_correlations(found, again["top layer"], masks["all"]))
        print(
            f"  {name:38} {deletion.mean() / random_del.mean():5.2f} "
            f"{insertion.mean() / random_ins.mean():5.2f} "
            f"{rho['all', False]:+6.2f} ({rho['all', True]:+.2f}) "
            f"{rho['ink', False]:+6.2f} ({rho['ink', True]:+.2f}) {top:+9.2f} {ms:5.1f}"
        )
    one, two = (attributions(ig(fixed(noise_images(1, s)[0])), module) for s in (0, 1))
    print(
        "  the same trained model, IG from noise seed 0 vs seed 1: |attr| "
        f"{median_of(rank_correlations(one, two, masks['all'])):+.2f} all pixels, "
        f"{median_of(rank_correlations(one, two, masks['ink'])):+.2f} ink pixels"
    )
    print(f"\nload after: {load()}")


if __name__ == "__main__":
    main()
