"""``nimbus deploy``, ``nimbus deployments`` and ``nimbus predict`` end to end: one real
server (shared with test_models.py), one registered image model, one deployment with real
replica processes used by every check in order."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli.conftest import Nimbus, Registry
from tests.helpers_models import CLASSES, images, insert_job, onnx_probabilities

MODEL = "cli-served"


def png(path: Path, image: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_deploy_inspect_predict_update_delete(
    nimbus: Nimbus,
    registry: Registry,
    tmp_path: Path,
) -> None:
    cli = nimbus
    cli.env.update(NIMBUS_URL=registry.server.url, NIMBUS_TOKEN=registry.server.admin_token)
    for _ in range(2):
        cli("models", "register", MODEL, "--from-job", registry.job())
    cli("models", "alias", MODEL, "production", "1")

    deployed = cli(
        "deploy",
        "cli-shapes",
        f"{MODEL}@production",
        "--replicas",
        "1",
        "--max-batch-size",
        "8",
        "--max-delay-ms",
        "1",
    )
    endpoint = deployed.stdout.strip()
    assert endpoint.startswith("http://127.0.0.1:") and "\n" not in endpoint
    try:
        shown = cli.json("deployments", "show", "cli-shapes")
        assert shown["endpoint"] == endpoint and shown["state"] == "ready"
        assert (shown["model"], shown["model_version"]) == (MODEL, 1)
        assert shown["model_ref"] == f"{MODEL}@production" and shown["max_batch_size"] == 8
        assert [r["state"] for r in shown["replicas"]] == ["ready"]
        human = cli("deployments", "show", "cli-shapes").stdout
        for text in (endpoint, f"{MODEL}:1", "ready", "up to 8 requests"):
            assert text in human, text
        listed = cli.json("deployments", "list")["deployments"]
        assert [d["name"] for d in listed] == ["cli-shapes"]
        assert "cli-shapes" in cli("deployments", "list").stdout

        # A PNG through /predict answers what the ONNX model says.
        x = images(1, seed=5)
        expected = onnx_probabilities(registry.model_dir, x)[0]
        answer = cli.json("predict", "cli-shapes", str(png(tmp_path / "x.png", x[0])))
        assert answer["label"] == CLASSES[int(expected.argmax())]
        assert set(answer["probabilities"]) == set(CLASSES)
        got = [answer["probabilities"][c] for c in CLASSES]
        assert np.allclose(got, expected, atol=1e-4)
        assert answer["label"] in cli("predict", "cli-shapes", str(tmp_path / "x.png")).stdout

        # Why: the same prediction explained, its heat overlay written as a PNG.
        overlay = tmp_path / "why.png"
        why = cli.json("explain", "cli-shapes", str(tmp_path / "x.png"), "--out", str(overlay))
        assert why["label"] == answer["label"] == why["target"]
        assert why["method"] == "integrated_gradients"
        assert np.array(why["attributions"]).shape == x[0].shape
        with Image.open(overlay) as drawn:
            assert drawn.size == (x.shape[2], x.shape[1])
        other = next(c for c in CLASSES if c != answer["label"])
        human = cli("explain", "cli-shapes", str(tmp_path / "x.png"), "--target", other).stdout
        assert f"explaining {other}" in human and "completeness error" in human
        bad = cli("explain", "cli-shapes", str(tmp_path / "x.png"), "--method", "shap", code=2)
        assert "does not explain image inputs" in bad.stderr
        assert (
            "--out writes"
            in cli("explain", "cli-shapes", "--text", "x", "--out", "a.png", code=2).stderr
        )

        # Failures: one line, non-zero.
        assert (
            "served by deployment(s) cli-shapes"
            in cli("models", "delete", f"{MODEL}:1", code=5).stderr
        )
        cli("predict", "cli-shapes", "--text", "a cat", code=2)
        tmp_path.joinpath("bad.png").write_bytes(b"not an image")
        cli("predict", "cli-shapes", str(tmp_path / "bad.png"), code=2)
        assert "either FILE or --text" in cli("predict", "cli-shapes", code=2).stderr
        cli("predict", "cli-shapes", str(tmp_path / "x.png"), "--text", "x", code=2)
        assert "no such file" in cli("predict", "cli-shapes", "nope.png", code=2).stderr
        cli("predict", "no-such-deployment", "--text", "x", code=4)
        cli("deploy", "cli-shapes", f"{MODEL}:1", "--no-wait", code=5)  # the name is taken
        cli("deploy", "other", f"{MODEL}:9", "--no-wait", code=4)
        cli("deploy", "other", f"{MODEL}:1", "--runtime", "tensorrt", code=2)

        # A rolling update to version 2; the endpoint stays.
        updated = cli.json("deployments", "update", "cli-shapes", f"{MODEL}:2")
        assert updated["model_version"] == 2 and updated["endpoint"] == endpoint
        assert [r["model_version"] for r in updated["replicas"]] == [2]
        again = cli.json("predict", "cli-shapes", str(tmp_path / "x.png"))
        assert again["label"] == answer["label"]  # version 2 holds the same weights
    finally:
        deleted = cli.json("deployments", "delete", "cli-shapes")
    assert deleted["state"] == "stopped"
    assert cli.json("deployments", "list")["deployments"] == []
    cli("deployments", "show", "cli-shapes", code=4)
    cli("deployments", "delete", "cli-shapes", code=4)
    assert cli.json("models", "delete", f"{MODEL}:1")["version"] == 1  # no longer deployed


def test_the_demo_serving_steps(registry: Registry, tmp_path: Path) -> None:
    """The demo's serving steps over a digits-shaped model (8x8x1, ten classes) and a small
    digits dataset, as the demo's earlier steps leave them in ``run.results``."""
    import copy

    from rich.console import Console

    from nimbus.cli.demo_run import DemoRun
    from nimbus.cli.demo_serving import SERVING_STEPS
    from nimbus.client import Client
    from nimbus.demo_data import write_digits_zip
    from tests.helpers_models import IMAGE_SPEC

    spec = copy.deepcopy(IMAGE_SPEC)
    classes = [str(c) for c in range(10)]
    signature = {"name": "input", "datatype": "UINT8", "shape": [-1, 8, 8, 1]}
    spec.update(classes=classes, input=signature, onnx_input=signature)
    spec["arch_params"].update(height=8, width=8, num_classes=10)
    spec["preprocessing"].update(height=8, width=8)
    spec["outputs"][0]["shape"] = [-1, 10]
    model_dir = export_digits(spec, tmp_path / "digits-model")
    job = insert_job(registry.server.home, "default", model_dir)

    out = Console(file=io.StringIO(), width=200)
    run = DemoRun(tmp_path / "demo", out, quiet=False)
    run.workdir.mkdir()
    run.client = Client(registry.server.url, registry.server.admin_token)
    try:
        data = write_digits_zip(tmp_path / "digits.zip", per_class=6)
        run.results["version"] = run.client.upload_dataset("demo-digits", data.path)
        run.results["jobs"] = {"cnn": run.client.get_job(job)}
        for _title, step in SERVING_STEPS:
            step(run)
    finally:
        run.client.close()
    text = out.file.getvalue()  # type: ignore[attr-defined]
    for needle in ("digits-cnn:1", "held-out digits", "/predict and /infer agree", "stopped"):
        assert needle in text, needle
    assert len(run.results["predictions"]) == 5
    assert run.results["deployment"]["state"] == "stopped"
    assert run.results["model"]["aliases"] == ["production"]


def export_digits(spec: dict[str, object], directory: Path) -> Path:
    import copy

    import torch

    from nimbus.modelformat.export import export_model
    from nimbus.runtime.architectures import build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(spec)).eval()
    example = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    export_model(model, copy.deepcopy(spec), example, directory)
    return directory
