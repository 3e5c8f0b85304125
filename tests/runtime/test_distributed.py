"""Two gloo workers on CPU train exactly what one worker trains (within float tolerance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.multiprocessing.spawn import spawn

from nimbus.runtime.data import DataSplits
from nimbus.runtime.reporter import MemoryReporter
from nimbus.runtime.trainer import train
from nimbus.system import free_port
from tests.runtime import synthetic

# 25 train examples in global batches of 4: the last batch holds one example, so one
# rank runs a step on an empty shard, which must still take part in the all-reduce.
RUNS: dict[str, tuple[Any, dict[str, Any]]] = {
    "cnn": (lambda: synthetic.tiny_images(n=35), {"optimizer": "adam"}),
    "mlp": (lambda: synthetic.tabular(n=32), {"optimizer": "sgd", "dropout": 0.0}),
    "text": (lambda: synthetic.text(n=32), {"optimizer": "adamw", "lr": 0.01}),
}
COMMON = {"epochs": 2, "batch_size": 4, "seed": 5}


def _data(name: str) -> DataSplits:
    data: DataSplits = RUNS[name][0]()
    return data


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        for name, (_, extra) in RUNS.items():
            reporter = MemoryReporter()
            result = train(name, _data(name), {**COMMON, **extra}, reporter)
            if rank == 0:
                save_file(result.model.state_dict(), f"{out_dir}/{name}.safetensors")
                Path(out_dir, f"{name}.json").write_text(json.dumps(result.history))
            else:
                assert reporter.metrics == [] and reporter.checkpoint is None
    finally:
        dist.destroy_process_group()


def test_two_workers_match_one(tmp_path: Path) -> None:
    spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for name, (_, extra) in RUNS.items():
        single = train(name, _data(name), {**COMMON, **extra}, MemoryReporter())
        weights = load_file(str(tmp_path / f"{name}.safetensors"))
        expected = single.model.state_dict()
        assert weights.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-5, msg=key)
        history = json.loads((tmp_path / f"{name}.json").read_text())
        assert len(history) == len(single.history) == 2
        for got, want in zip(history, single.history, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                assert abs(got[key] - want[key]) <= 1e-5, (name, key)
