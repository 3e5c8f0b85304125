"""The job entry point running users' scripts against a fake control plane."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
import time
from typing import Any

import pytest

from nimbus.jobs.domain import USER_ERROR_EXIT_CODE
from nimbus.runtime.job_api import CANCELLED_EXIT_CODE, FENCED_EXIT_CODE
from tests.runtime import synthetic
from tests.runtime.helpers import Harness, run_main, spawn_entry_until

TRAIN = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from nimbus import runtime as nr

    data = nr.dataset()
    epochs = nr.params["epochs"]
    _, height, width, channels = data.train.x.shape


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(height * width * channels, len(data.classes))

        def forward(self, x):
            return self.fc(x.flatten(1).float() / 255)


    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    start = 0
    state = nr.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        start = state["epoch"]
    loader = torch.utils.data.DataLoader(data.train.torch(), batch_size=8, shuffle=True)
    for epoch in range(start + 1, epochs + 1):
        for batch, (x, y) in enumerate(loader, 1):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            nr.progress(epoch, epochs, batch, len(loader))
        nr.log(epoch, train_loss=loss.item())
        nr.checkpoint({"model": model.state_dict(), "epoch": epoch})
    nr.save_model(model, data.train.x[:4])
    print("argv", sys.argv[1:], "cwd files", sorted(p for p in __import__("os").listdir(".")))
    """
)


def test_a_script_trains_saves_and_is_scored(harness: Harness, capsys: Any) -> None:
    job_api = harness.job_api
    job_api.job(synthetic.tiny_images(n=60), code=TRAIN.encode(), params={"epochs": "2"})
    assert run_main(harness) == 0

    assert set(job_api.artifacts) == {
        "spec.json",
        "weights.safetensors",
        "model.onnx",
        "program.json",  # its torch module could be exported: gradient explanations
        "program.safetensors",
    }
    spec = json.loads(job_api.artifacts["spec.json"])
    assert spec["architecture"] == "custom"
    assert (
        spec["input"]
        == spec["onnx_input"]
        == {"name": "input", "datatype": "UINT8", "shape": [-1, 6, 6, 3]}
    )
    (evaluation,) = job_api.results  # scored with ONNX Runtime on the test split
    assert evaluation["support"] == 5
    assert [step for step, _ in job_api.series("train_loss")] == [1, 2]
    assert job_api.series("test_accuracy") == [(2, evaluation["accuracy"])]
    assert [step for step, _, _ in job_api.checkpoints] == [1, 2]
    assert job_api.progress[-1]["epoch"] == 2
    out = capsys.readouterr().out
    assert "argv [] cwd files ['code', 'data', 'model']" in out


def test_a_resumed_script_restores_its_checkpoint(harness: Harness) -> None:
    job_api = harness.job_api
    job_api.job(synthetic.tiny_images(n=60), code=TRAIN.encode(), params={"epochs": 3})
    job_api.fence_after_checkpoints = 2
    assert run_main(harness) == FENCED_EXIT_CODE
    job_api.fence_after_checkpoints = None
    second = job_api.new_attempt()
    assert run_main(harness, second) == 0
    assert [step for step, _ in job_api.series("train_loss", second)] == [3]


def test_an_exception_in_the_script_is_a_user_error(harness: Harness, capsys: Any) -> None:
    script = "def helper():\n    raise ValueError('boom')\n\nhelper()\n"
    harness.job_api.job(synthetic.tiny_images(), code=script.encode())
    assert run_main(harness) == USER_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "ValueError: boom" in err and "train.py" in err and "helper()" in err
    assert "runpy" not in err and "usercode.py" not in err
    assert harness.job_api.results == [] and harness.job_api.artifacts == {}


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (None, 0), (2, USER_ERROR_EXIT_CODE)])
def test_system_exit(harness: Harness, code: int | None, expected: int) -> None:
    harness.job_api.job(synthetic.tiny_images(), code=f"raise SystemExit({code})".encode())
    assert run_main(harness) == expected


def test_a_tar_with_main_and_an_explicit_evaluation(harness: Harness) -> None:
    main = textwrap.dedent(
        """
        import numpy as np
        from helper import predict
        from nimbus import runtime as nr

        test = nr.dataset().test
        result = nr.evaluate(test.y, predict(test.x))
        assert result["accuracy"] == 1.0
        """
    )
    helper = "def predict(x):\n    return x.reshape(len(x), -1, x.shape[-1]).sum(1).argmax(1)\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in (("main.py", main), ("helper.py", helper)):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    harness.job_api.job(synthetic.tiny_images(), code=buffer.getvalue(), entry="main.py")
    assert run_main(harness) == 0
    (evaluation,) = harness.job_api.results
    assert evaluation["accuracy"] == 1.0
    assert harness.job_api.artifacts == {}  # no nr.save_model: nothing to upload


def test_user_code_cannot_swallow_the_fence(harness: Harness) -> None:
    script = textwrap.dedent(
        """
        from nimbus import runtime as nr
        try:
            nr.log(1, loss=1.0)
        except Exception:
            print("swallowed")
        raise SystemExit(0)
        """
    )
    harness.job_api.job(synthetic.tiny_images(), code=script.encode())
    harness.job_api.fence_on_route = "metrics"
    assert run_main(harness) == FENCED_EXIT_CODE


@pytest.mark.parametrize("how", ["fence", "cancel"])
def test_the_heartbeat_stops_a_busy_script(harness: Harness, how: str) -> None:
    job_api = harness.job_api
    script = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"
    job_api.job(synthetic.tiny_images(), code=script.encode())
    proc = spawn_entry_until(harness, "sleeping")
    try:
        start = time.monotonic()
        if how == "fence":
            job_api.new_attempt()
        else:
            job_api.cancel = True
        code = proc.wait(timeout=20)
        assert time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.communicate()
    assert code == (FENCED_EXIT_CODE if how == "fence" else CANCELLED_EXIT_CODE)
