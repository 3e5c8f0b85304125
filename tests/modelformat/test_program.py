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
        (lambda p: p.update(input_dtype="uint8"), "input_dtype must be float32 or int64"),
        (lambda p: p.update(input_dtype="int64"), "must embed its token ids once"),
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


class TinyText(nn.Module):
    """Token ids in: embedding (id 0 pads, its row zero) -> mean over the tokens -> linear."""

    def __init__(self, vocab: int = 20, classes: int = 3, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.linear = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(self.embedding(ids).mean(dim=1))
        return out


class TwoEmbeddings(TinyText):
    """The ids embedded twice: which one Integrated Gradients should start from is unclear."""

    def __init__(self, vocab: int = 20, classes: int = 3) -> None:
        super().__init__(vocab, classes)
        self.other = nn.Embedding(vocab, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear((self.embedding(ids) + self.other(ids)).mean(dim=1))
        return out


class NoEmbedding(nn.Module):
    """The ids used as numbers: no embedding to integrate over."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(ids.float())
        return out


def token_ids(rows: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(1, 20, (rows, 5), dtype=np.int64)
    ids[:, 3:] = 0  # two padding slots
    return ids


def test_a_text_program_explains_from_its_embedding_as_the_module_does(
    tmp_path: Path,
) -> None:
    """Integrated Gradients on a text program's one embedding gives the attributions the
    module itself gets from its nn.Embedding, per token slot, complete within 1e-2."""
    from nimbus.explain.attributions import explain
    from nimbus.explain.options import ExplainOptions

    torch.manual_seed(0)
    module = TinyText().eval()
    write_checked_program(module, token_ids(2), tmp_path, token_ids=True)
    program = Program.load(tmp_path)
    assert program.embedding is not None
    ids = token_ids(4, seed=1)
    assert torch.allclose(program(torch.from_numpy(ids)), module(torch.from_numpy(ids)))
    options = ExplainOptions(steps=64)
    got = explain(program, "text", ids, options)
    expected = explain(module, "text", ids, options)
    assert got.attributions.shape == (4, 5)
    assert np.allclose(got.attributions, expected.attributions, atol=1e-6)
    assert got.delta is not None and float(np.abs(got.delta).max()) < 1e-2
    occluded = explain(program, "text", ids, ExplainOptions(method="occlusion"))
    assert np.allclose(occluded.attributions[:, 3:], 0)  # float ids back to int64


@pytest.mark.parametrize(
    ("module", "found"), [(TwoEmbeddings, "it has 2"), (NoEmbedding, "it has 0")]
)
def test_a_text_program_without_exactly_one_embedding_is_not_written(
    tmp_path: Path, module: type[nn.Module], found: str
) -> None:
    with pytest.raises(ProgramError, match=f"embed its token ids once .*{found}"):
        write_checked_program(module().eval(), token_ids(2), tmp_path, token_ids=True)
    assert not (tmp_path / PROGRAM_FILE).exists()
