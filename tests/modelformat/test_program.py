"""The gradient program of a script's torch module: written from torch.export's graph, read
back with nothing unpickled, evaluated or imported, and every hostile part refused."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from safetensors.torch import save_file
from torch import nn

from nimbus.modelformat.files import PROGRAM_FILE, PROGRAM_WEIGHTS_FILE
from nimbus.modelformat.program import (
    Program,
    ProgramError,
    write_checked_program,
    write_program,
)

torch.set_num_threads(1)


class Net(nn.Module):
    """Raw uint8 images in, logits out: conv, batch norm, pooling, dropout, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool, self.drop, self.linear = nn.MaxPool2d(2), nn.Dropout(0.2), nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float() / 255
        x = self.pool(torch.relu(self.norm(self.conv(x))))
        out: torch.Tensor = self.linear(self.drop(x.flatten(1)))
        return out


class Branchy(nn.Module):
    """Control flow on the data: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out if x.sum() > 0 else -out


class Payload:
    """What a hostile archive carries: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, 6, 6, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("program")
    write_checked_program(Net().eval(), images(2), out)
    return out


def test_the_program_gives_the_module_outputs_at_any_batch(program_dir: Path) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    program = Program.load(program_dir)
    for rows in (1, 5, 33):  # exported at 2: the batch is dynamic
        x = torch.from_numpy(images(rows, seed=rows))
        assert torch.allclose(program(x.float()), net(x), atol=1e-5)
    names = json.loads((program_dir / PROGRAM_FILE).read_text())["nodes"]
    assert {n["op"] for n in names} >= {"aten.conv2d.default", "aten.linear.default"}


def test_integrated_gradients_on_the_program_is_complete(program_dir: Path) -> None:
    program = Program.load(program_dir)
    x = torch.from_numpy(images(3)).float()
    ig = IntegratedGradients(lambda z: torch.softmax(program(z), dim=-1))
    attributions, delta = ig.attribute(
        x, torch.zeros_like(x), target=0, n_steps=64, return_convergence_delta=True
    )
    assert attributions.shape == x.shape
    assert float(delta.abs().max()) < 1e-2


def test_data_dependent_control_flow_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match=r"torch\.export could not trace"):
        write_program(Branchy().eval(), torch.ones(2, 4), tmp_path)
    assert not (tmp_path / PROGRAM_FILE).exists()


def hostile(program_dir: Path, tmp_path: Path) -> Path:
    """A copy of a good program to tamper with."""
    copy = tmp_path / "hostile"
    copy.mkdir()
    for name in (PROGRAM_FILE, PROGRAM_WEIGHTS_FILE):
        (copy / name).write_bytes((program_dir / name).read_bytes())
    return copy


def test_a_pickle_payload_for_weights_is_refused_and_never_run(
    program_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    target = hostile(program_dir, tmp_path)
    # As a .pt2 archive's pickled weight member (what torch.export.load would unpickle;
    # with use_pickle it does, and the command runs), and as a raw pickle.
    buffer = io.BytesIO()
    torch.save({"w": Payload(marker)}, buffer)
    for payload in (buffer.getvalue(), pickle.dumps(Payload(marker))):
        (target / PROGRAM_WEIGHTS_FILE).write_bytes(payload)
        with pytest.raises(ProgramError, match=r"cannot read program\.safetensors"):
            Program.load(target)
    assert not marker.exists()


def tamper(target: Path, change: Any) -> None:
    program = json.loads((target / PROGRAM_FILE).read_text())
    change(program)
    (target / PROGRAM_FILE).write_text(json.dumps(program))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["nodes"][0].update(op="torch.os.system"), "'torch.os.system' is not one"),
        (lambda p: p["nodes"][0].update(op="aten.from_file.default"), "from_file"),
        (lambda p: p["nodes"][0].update(op="aten.conv2d.nope"), "does not exist"),
        (lambda p: p["nodes"][0].update(args=[{"node": "later"}]), "argument"),
        (lambda p: p["nodes"][0].update(args=[{"py/object": "os.system"}]), "argument"),
        (lambda p: p["nodes"].append(p["nodes"][0]), "used twice"),
        (lambda p: p.update(format=2), "not a format-1 program"),
        (lambda p: p["tensors"].append("extra"), "does not hold the program's tensors"),
    ],
)
def test_a_tampered_graph_is_refused_naming_the_problem(
    program_dir: Path, tmp_path: Path, change: Any, message: str
) -> None:
    target = hostile(program_dir, tmp_path)
    tamper(target, change)
    with pytest.raises(ProgramError, match=message):
        Program.load(target)


def test_extra_tensors_are_refused(program_dir: Path, tmp_path: Path) -> None:
    target = hostile(program_dir, tmp_path)
    save_file({"x": torch.zeros(1)}, str(target / PROGRAM_WEIGHTS_FILE))
    with pytest.raises(ProgramError, match="does not hold"):
        Program.load(target)
