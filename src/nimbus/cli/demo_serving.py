"""The serving part of ``nimbus demo``: register the digits CNN, alias it, deploy it,
predict held-out digits through the endpoint (``/predict`` with PNG bytes, and OIP v2
``/infer`` with a tensor), then delete the deployment.

Each step is ``step(run: DemoRun) -> None`` like those in :mod:`nimbus.cli.demo`, which
appends :data:`SERVING_STEPS` to its journey; the shared run state lives in
:mod:`nimbus.cli.demo_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from rich import box
from rich.table import Table
from rich.text import Text

from nimbus.cli.demo_run import DemoFailed, DemoRun
from nimbus.cli.deployments import deployment_view
from nimbus.cli.models import models_table, version_view
from nimbus.demo_data import png_bytes

MODEL = "digits-cnn"
ALIAS = "production"
DEPLOYMENT = "digits"
HELD_OUT = 5  # test-split digits sent through the endpoint
DEPLOY_TIMEOUT = 120.0


def _fail(message: str) -> Exception:
    return DemoFailed(f"demo failed: {message}")


def register_model(run: DemoRun) -> None:
    job = run.results["jobs"]["cnn"]
    run.say(f"$ nimbus models register {MODEL} --from-job {job.id}", style="dim", markup=False)
    version = run.api.register_model(MODEL, job.id)
    run.results["model"] = {"name": version.model, "version": version.version, "job": version.job}
    run.say(
        f"Registered {version.model}:{version.version}: the server checked every file "
        "(hashes, safetensors, ONNX outputs, test accuracy matching the job's).",
        markup=False,
    )
    run.say(version_view(version))


def alias_production(run: DemoRun) -> None:
    version = run.results["model"]["version"]
    run.say(f"$ nimbus models alias {MODEL} {ALIAS} {version}", style="dim", markup=False)
    run.api.set_alias(MODEL, ALIAS, version)
    run.results["model"]["aliases"] = [ALIAS]
    run.say("$ nimbus models list", style="dim", markup=False)
    run.say(models_table(run.api.list_models()))


def deploy_model(run: DemoRun) -> None:
    ref = f"{MODEL}@{ALIAS}"
    run.say(f"$ nimbus deploy {DEPLOYMENT} {ref} --replicas 1", style="dim", markup=False)
    run.api.create_deployment(DEPLOYMENT, ref, replicas=1)
    deployment = run.api.wait_deployment(DEPLOYMENT, timeout=DEPLOY_TIMEOUT)
    run.results["deployment"] = {
        "name": DEPLOYMENT,
        "endpoint": deployment.endpoint,
        "model_version": deployment.model_version,
        "state": deployment.state,
    }
    run.say(
        f"Serving at {deployment.endpoint} (OIP v2: {deployment.endpoint}/v2/models/{DEPLOYMENT}).",
        markup=False,
    )
    run.say(deployment_view(deployment))


def held_out_digits(run: DemoRun) -> tuple[np.ndarray, list[str]]:
    """The first :data:`HELD_OUT` test-split images (uint8 [N, 8, 8, 1]) and their labels,
    read from the dataset version's prepared arrays as the SDK downloads them."""
    version = run.results["version"]
    folder = run.workdir / "held-out"
    run.api.download_dataset(f"{version.dataset}:{version.version}", folder)
    x = np.load(folder / "test_x.npy", allow_pickle=False)[:HELD_OUT]
    y = np.load(folder / "test_y.npy", allow_pickle=False)[:HELD_OUT]
    classes = [str(c) for c in version.classes or range(10)]
    return np.ascontiguousarray(x, dtype=np.uint8), [classes[int(i)] for i in y]


def predict_digits(run: DemoRun) -> None:
    x, truth = held_out_digits(run)
    run.say(
        f"$ nimbus predict {DEPLOYMENT} digit.png   (x{len(truth)} held-out test digits)",
        style="dim",
        markup=False,
    )
    answers = [run.api.predict(DEPLOYMENT, data=png_bytes(image[:, :, 0])) for image in x]
    run.say(
        f"and one OIP v2 request: POST /v2/models/{DEPLOYMENT}/infer, "
        f"a UINT8 tensor of shape {list(x.shape)}",
        style="dim",
        markup=False,
    )
    outputs = run.api.infer(DEPLOYMENT, x)
    infer_labels = [str(v.decode() if isinstance(v, bytes) else v) for v in outputs["label"]]
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)

    table = Table(box=box.SIMPLE_HEAD, title="held-out digits", title_justify="left")
    for column in ("#", "truth", "/predict", "p", "OIP v2 infer", "p"):
        table.add_column(column, justify="right" if column in ("#", "p") else "left")
    rows: list[dict[str, Any]] = []
    for i, (answer, label) in enumerate(zip(answers, truth, strict=True)):
        predicted = str(answer["label"])
        p = float((answer.get("probabilities") or {}).get(predicted, 0.0))
        style = "green" if predicted == label else "red"
        best = float(probabilities[i].max())
        table.add_row(
            str(i),
            Text(label),
            Text(predicted, style=style),
            f"{p:.3f}",
            Text(infer_labels[i], style=style),
            f"{best:.3f}",
        )
        rows.append({"truth": label, "predict": predicted, "infer": infer_labels[i]})
    run.say(table)
    run.results["predictions"] = rows
    if [r["predict"] for r in rows] != infer_labels:
        raise _fail("/predict and OIP v2 /infer disagree on the same digits")
    correct = sum(r["predict"] == r["truth"] for r in rows)
    run.say(
        f"{correct}/{len(rows)} correct; /predict and /infer agree.", style="green", markup=False
    )


def delete_deployment(run: DemoRun) -> None:
    run.say(f"$ nimbus deployments delete {DEPLOYMENT}", style="dim", markup=False)
    deployment = run.api.delete_deployment(DEPLOYMENT)
    run.results.setdefault("deployment", {})["state"] = deployment.state
    run.say(
        f"Deployment {DEPLOYMENT} {deployment.state}: its replica drained and "
        "exited; the model version stays in the registry.",
        markup=False,
    )


SERVING_STEPS: list[tuple[str, Callable[[DemoRun], None]]] = [
    ("Register the CNN in the model registry", register_model),
    (f"Alias it as {ALIAS}", alias_production),
    ("Deploy it as an online inference service", deploy_model),
    ("Predict held-out digits through the endpoint", predict_digits),
    ("Delete the deployment", delete_deployment),
]
