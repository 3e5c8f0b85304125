"""Notebooks on a real server: the quick start (examples/quickstart.ipynb) executed with
nbclient against it, and a notebook submitted as a job through the CLI (its kernel in the
job's sandbox where the sandbox can run: root and bubblewrap). Broken uploads: tests/api/
test_jobs.py; a failing cell: tests/runtime/test_notebook.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from nimbus.client import Client
from nimbus.errors import InvalidInput
from tests.cli.conftest import Nimbus
from tests.e2e.conftest import FAST, client_for, upload_digits
from tests.helpers import ServerProcess, passable_dir, sandbox_runs_here

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
SANDBOX = sandbox_runs_here()

JOB_CELLS = [
    # The kernel talks to the job over unix sockets; a loopback is still there for the
    # notebook's own use (a sandbox has its own, up, and nothing else).
    "import socket\n"
    "with socket.create_server(('127.0.0.1', 0)) as listening:\n"
    "    print('loopback up:', listening.getsockname()[0])\n"
    "print('interfaces:', sorted(name for _, name in socket.if_nameindex()))\n",
    "import torch\n"
    "from torch import nn\n"
    "from nimbus import runtime as nr\n"
    "data = nr.dataset()\n"
    "x = torch.from_numpy(data.train.x[:256]).flatten(1).float() / 255\n"
    "y = torch.from_numpy(data.train.y[:256])\n"
    "torch.manual_seed(0)\n"
    "model = nn.Sequential(nn.Flatten(), nn.Linear(x.shape[1], len(data.classes)))\n"
    "optimizer = torch.optim.SGD(model.parameters(), lr=lr)\n"
    "for epoch in range(1, epochs + 1):\n"
    "    loss = nn.functional.cross_entropy(model(x), y)\n"
    "    optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
    "    nr.log(epoch, train_loss=loss.item())\n",
    "class Scaled(nn.Module):\n"
    "    def __init__(self, inner):\n"
    "        super().__init__(); self.inner = inner\n"
    "    def forward(self, images):\n"
    "        return self.inner(images.float() / 255)\n"
    "nr.save_model(Scaled(model), data.train.x[:4])\n",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Jobs in the sandbox where it can run (its home must be passable by the job uids)."""
    with contextlib.ExitStack() as stack:
        if SANDBOX:
            home = stack.enter_context(passable_dir()) / "home"
            env = {**FAST, "NIMBUS_JOB_ISOLATION": "sandbox"}
        else:
            home, env = tmp_path_factory.mktemp("notebooks") / "home", dict(FAST)
        running = stack.enter_context(ServerProcess(home, env=env))
        yield running


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[Client]:
    with client_for(server) as client:
        yield client


def test_the_quickstart_is_stored_without_outputs() -> None:
    notebook = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


@pytest.mark.slow
def test_the_quickstart_runs_against_a_live_server(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel reads the server as the SDK does: NIMBUS_URL and NIMBUS_TOKEN.
    monkeypatch.setenv("NIMBUS_URL", server.url)
    monkeypatch.setenv("NIMBUS_TOKEN", server.admin_token)
    monkeypatch.setenv("NIMBUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    # ipykernel's inline backend (Agg underneath): each figure becomes a PNG output
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(QUICKSTART, as_version=4)
    notebook.cells[1].source = notebook.cells[1].source.replace("epochs = 3", "epochs = 2")
    executor = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    executor.execute()  # CellExecutionError on any cell's error

    text = "\n".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "succeeded" in text and "registered digits-quickstart:1" in text
    assert "predicted" in text
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3, text  # the curves, the confusion matrix, the explanation


@pytest.mark.slow
def test_a_notebook_job_runs_with_its_params(
    server: ServerProcess, api: Client, tmp_path: Path
) -> None:
    dataset = upload_digits(api, tmp_path)
    path = tmp_path / "train.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("epochs = 1\nlr = 0.5\n", metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(source) for source in JOB_CELLS),
    ]
    nbformat.write(notebook, path)
    cli = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli"),
            "NIMBUS_URL": server.url,
            "NIMBUS_TOKEN": server.admin_token,
            "COLUMNS": "200",
        }
    )

    submitted = cli.json("train", "--dataset", dataset, "--model", str(path), "--param", "epochs=3")
    job = api.wait_job(submitted["id"], timeout=300)
    logs = "".join(chunk.data for chunk in api.iter_logs(job.id))
    assert job.state == "succeeded", logs + server.log()[-3000:]
    assert "loopback up: 127.0.0.1" in logs and "step 3  train_loss" in logs
    if SANDBOX:
        assert "interfaces: ['lo']" in logs  # the sandbox's network namespace
    metrics = api.job_metrics(job.id)
    assert [point.step for point in metrics["train_loss"]] == [1, 2, 3]
    assert job.evaluation is not None and "test_accuracy" in metrics  # the saved model, scored

    out = tmp_path / "executed.ipynb"
    cli("jobs", "artifact", job.id, "notebook.ipynb", "--out", str(out))
    executed = nbformat.read(out, as_version=4)
    injected = next(
        c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    assert "epochs = 3" in injected.source
    assert any("loopback up" in o.get("text", "") for o in executed.cells[2].outputs)
    cli("jobs", "artifact", job.id, "nothing.txt", code=4)
    other = api.create_token("other-tenant", tenant="notebooks-other").token
    route = f"/api/v1/jobs/{job.id}/artifacts/notebook.ipynb"
    assert server.client(other).get(route).status_code == 404  # another tenant's job
    assert server.client().get(route).content == out.read_bytes()


def test_a_notebook_job_runs_without_a_dataset(
    server: ServerProcess, api: Client, tmp_path: Path
) -> None:
    """``nimbus train --model notebook.ipynb`` without ``--dataset``: the notebook runs and
    logs its metrics (``nr.dataset()`` there fails naming what is missing:
    tests/runtime/test_entry.py); any other model without a dataset is a 400 saying which
    need one."""
    cli = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli"),
            "NIMBUS_URL": server.url,
            "NIMBUS_TOKEN": server.admin_token,
            "COLUMNS": "200",
        }
    )
    notebook = nbformat.v4.new_notebook()
    source = "from nimbus import runtime as nr\nnr.log(1, answer=42.0)\n"
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(notebook, tmp_path / "plain.ipynb")
    plain = cli.json("train", "--model", str(tmp_path / "plain.ipynb"))
    script = tmp_path / "train.py"
    script.write_text("print('never')\n")
    with pytest.raises(InvalidInput, match=r"a dataset is required .* only a notebook"):
        api.submit_job(None, script)  # the server's 400, past the CLI's own check
    job = api.wait_job(plain["id"], timeout=300)
    logs = "".join(chunk.data for chunk in api.iter_logs(job.id))
    assert job.state == "succeeded", logs + server.log()[-3000:]
    assert job.dataset is None and "main.ipynb without a dataset" in logs, logs
    assert [point.value for point in api.job_metrics(job.id)["answer"]] == [42.0]
