"""The plain PyTorch training loop bench/train.py compares a Nimbus job with.

Self-contained on purpose: bench/train.py runs it in its own process, and also uploads this
file's source as a custom script (plus a call at its end) to run the very same loop inside a
job's sandbox, which separates what the job's environment costs (sandbox, cgroup, runtime
process) from what Nimbus's built-in trainer costs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nimbus.runtime.architectures import build_model
from nimbus.runtime.builtins import PREPARERS
from nimbus.runtime.data import DataSplits
from nimbus.runtime.hyperparams import validate_params

EVAL_BATCH = 512


def plain_epochs(data: DataSplits, raw_params: dict[str, Any]) -> list[tuple[float, float]]:
    """Train the built-in ``cnn`` on ``data`` in a plain loop: the wall and CPU seconds of
    each epoch (one pass over the train split keeping the train loss and accuracy, plus the
    val split's loss and accuracy, as a job reports them)."""
    params = validate_params("cnn", data.task, raw_params)
    torch.manual_seed(0)
    prepared = PREPARERS["cnn"](data, params)
    model = build_model(prepared.spec("cnn", data.task, data.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    train_x, train_y = np.asarray(data.train.x), np.asarray(data.train.y)
    val_x = torch.from_numpy(np.array(data.val.x))
    val_y = torch.from_numpy(np.array(data.val.y))
    size = params["batch_size"]
    epochs: list[tuple[float, float]] = []
    for _ in range(params["epochs"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        order = torch.randperm(len(train_y)).numpy()
        loss_sum, correct = 0.0, 0
        for b in range(math.ceil(len(order) / size)):
            idx = order[b * size : (b + 1) * size]
            x = torch.from_numpy(train_x[idx])
            y = torch.from_numpy(train_y[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        model.eval()
        with torch.no_grad():
            val_logits = torch.cat(
                [model(val_x[i : i + EVAL_BATCH]) for i in range(0, len(val_y), EVAL_BATCH)]
            )
            val_loss = F.cross_entropy(val_logits, val_y).item()
            val_correct = int((val_logits.argmax(1) == val_y).sum())
        assert math.isfinite(loss_sum + val_loss) and correct + val_correct >= 0
        epochs.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return epochs
