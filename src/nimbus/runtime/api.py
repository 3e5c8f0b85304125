"""The ``nr`` API for training scripts: ``from nimbus import runtime as nr``.

Inside a job (started by ``python -m nimbus.runtime.entry``) every call goes to the control
plane over the job's job API. Outside a job (no ``NIMBUS_JOB_TOKEN``) the same script
runs in *local mode*, for development:

- ``nr.params`` comes from ``NIMBUS_PARAMS`` (a JSON file, or an inline JSON object), else
  ``{}``;
- ``nr.dataset()`` reads ``NIMBUS_DATASET_DIR``, a directory written by
  ``nimbus datasets download NAME:V DIR`` (the ``.npy`` files plus ``version.json``);
- ``nr.log`` prints; ``nr.checkpoint``/``nr.restore`` and ``nr.save_model`` write under
  ``NIMBUS_JOB_DIR`` (default ``./nimbus-run``): ``checkpoint.safetensors`` and ``model/``.
  A second local run resumes from that checkpoint; delete the directory to start over.
- Keras runs on PyTorch: a script that imports keras before nimbus needs
  ``KERAS_BACKEND=torch`` in its environment (TensorFlow, Keras's default, is absent), or
  ``python -m nimbus.runtime script.py``, which sets it up as a job does
  (:mod:`nimbus.runtime.keras_backend`). A TensorFlow program (``import tensorflow``
  first, then ``tf.keras``) gets the TensorFlow backend.

With several workers, ``nr.log``, ``nr.progress``, ``nr.checkpoint`` and ``nr.save_model``
act on rank 0 only (the others return at once); ``nr.restore`` and ``nr.dataset`` work on
every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.runtime.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes
from nimbus.runtime.custom import Output, export_custom
from nimbus.runtime.data import DataSplits, Split
from nimbus.runtime.evaluation import evaluate as score
from nimbus.runtime.job_api import format_metrics
from nimbus.runtime.reporter import Reporter

__all__ = [
    "Dataset",
    "DatasetSplit",
    "Session",
    "checkpoint",
    "dataset",
    "evaluate",
    "log",
    "progress",
    "restore",
    "save_model",
]

LOCAL_DIR = "nimbus-run"
_UNSET: Any = object()


class ArrayDataset(TorchDataset[tuple[Any, torch.Tensor]]):
    """A torch Dataset over one split: ``(x, y)`` per example, read from the memmap on demand.

    x is a tensor (images uint8 ``[H, W, C]``, rows float32 ``[F]``) or a ``str`` for text;
    y an int64 scalar tensor.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        row = self.x[index]
        x = str(row) if self.x.dtype.kind == "U" else torch.from_numpy(np.array(row))
        return x, torch.tensor(int(self.y[index]), dtype=torch.int64)


@dataclass(frozen=True)
class DatasetSplit:
    """One split: ``x`` and ``y`` as numpy arrays (memory-mapped), or a torch Dataset view."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def torch(self) -> ArrayDataset:
        return ArrayDataset(self.x, self.y)


@dataclass(frozen=True)
class Dataset:
    """The job's dataset version: task, class names, and its train/val/test splits."""

    task: Task
    classes: list[str]
    train: DatasetSplit
    val: DatasetSplit
    test: DatasetSplit
    features: list[str] | None = None  # tabular column names

    @classmethod
    def of(cls, data: DataSplits) -> Dataset:
        def view(split: Split) -> DatasetSplit:
            return DatasetSplit(split.x, split.y)

        return cls(
            data.task,
            list(data.classes),
            view(data.train),
            view(data.val),
            view(data.test),
            data.features,
        )


class CheckpointStore(Reporter, Protocol):
    """A reporter that stores checkpoints under a given step and knows the last one."""

    last_step: int  # of the latest checkpoint saved or loaded

    def save_at(self, step: int, state: dict[str, Any]) -> None:
        """Store ``state`` as the checkpoint of ``step``."""


@dataclass
class Session:
    """What the ``nr`` functions act on: one job attempt's worker, or a local run."""

    params: dict[str, Any]
    reporter: CheckpointStore
    load_data: Callable[[], DataSplits]
    model_dir: Path
    rank: int = 0
    evaluation: dict[str, Any] | None = None  # recorded by nr.evaluate
    saved_model: dict[str, Any] | None = None  # spec.json of the model nr.save_model wrote
    logged_step: int = 0  # the highest step nr.log recorded
    checkpoint_step: int = 0  # of the latest checkpoint saved or restored
    _restored: Any = field(default=_UNSET, repr=False)

    @cached_property
    def data(self) -> DataSplits:
        return self.load_data()

    def restore(self) -> dict[str, Any] | None:
        """The latest checkpoint, fetched once and then kept until the next save."""
        if self._restored is _UNSET:
            self._restored = self.reporter.load_checkpoint()
            if self._restored is not None:
                self.checkpoint_step = self.reporter.last_step
        return dict(self._restored) if self._restored is not None else None

    def save(self, state: dict[str, Any], step: int | None) -> None:
        """Store ``state`` as the checkpoint of ``step``; by default the last logged step
        (a checkpoint usually follows an epoch's metrics), or one past the last checkpoint."""
        if step is None:
            step = max(self.logged_step, self.checkpoint_step + 1)
        self.reporter.save_at(step, state)
        self.checkpoint_step = int(step)
        self._restored = _UNSET


_current: Session | None = None


def activate(session: Session | None) -> None:
    """Make ``session`` the one the ``nr`` functions use (the job entry point does this)."""
    global _current
    _current = session


def session() -> Session:
    """The active session; outside a job, a local one built from the environment."""
    global _current
    if _current is None:
        if os.environ.get("NIMBUS_JOB_TOKEN"):
            raise InvalidInput(
                "this process runs inside a job but the job runtime did not start it: run "
                "scripts as jobs (nimbus train --model script.py), not by hand"
            )
        _current = local_session(os.environ)
    return _current


def __getattr__(name: str) -> Any:
    if name == "params":  # read at first use: the job's params may arrive after import
        return session().params
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dataset() -> Dataset:
    """The job's dataset: ``.classes``, ``.task``, ``.train``/``.val``/``.test`` (``.x``,
    ``.y``, ``.torch()``). Images are uint8 ``[N, H, W, C]``, texts an array of str, tabular
    rows float32 ``[N, F]``; labels int64 class indices."""
    return Dataset.of(session().data)


def log(step: int, **metrics: float) -> None:
    """Record metric values at ``step`` (an epoch, or a batch count: any increasing int)."""
    current = session()
    if current.rank:
        return
    current.logged_step = max(current.logged_step, int(step))
    current.reporter.log(int(step), **{k: float(v) for k, v in metrics.items()})


def progress(epoch: int, epochs: int, batch: int = 0, batches: int = 0) -> None:
    """Where training stands, for live progress bars (throttled; cheap to call per batch)."""
    current = session()
    if not current.rank:
        current.reporter.progress(int(epoch), int(epochs), int(batch), int(batches))


def checkpoint(state: dict[str, Any], step: int | None = None) -> None:
    """Save ``state`` (dicts, lists, tensors, numbers, strings: safetensors + JSON, never
    pickle) as the latest checkpoint; a later attempt gets it from :func:`restore`.

    ``step`` defaults to the last step logged, or one past the last checkpoint.
    """
    current = session()
    if not current.rank:
        current.save(state, step)


def restore() -> dict[str, Any] | None:
    """The latest checkpoint of this job (an earlier attempt's included), or None."""
    return session().restore()


def save_model(
    model: Any,
    example_input: Any,
    *,
    preprocessing: dict[str, Any] | None = None,
    output: Output = "auto",
) -> Path | None:
    """Export ``model`` (torch nn.Module, Keras 3 on the torch backend, or a TensorFlow
    program's ``tf.keras`` model, exported with tf2onnx) as the job's model: ONNX +
    safetensors + spec.json (architecture "custom"), checked with ONNX Runtime.

    ``example_input`` is a few inputs as the model takes them: the dataset's raw images or
    rows, or token ids for text (then pass ``preprocessing=encoder.preprocessing()``).
    ``output`` says whether the model ends in logits or probabilities ("auto" looks).
    Returns the model directory (None on ranks other than 0). Inside a job the files are
    uploaded when the script ends, and scored on the test split unless :func:`evaluate` was
    called.
    """
    current = session()
    if current.rank:
        return None
    current.saved_model = export_custom(
        model,
        example_input,
        current.data,
        current.model_dir,
        preprocessing=preprocessing,
        output=output,
    )
    print(f"saved the model to {current.model_dir}")
    return current.model_dir


def evaluate(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Score predictions (class indices, or one row of scores per example) against labels:
    accuracy, precision, recall, F1, per class, confusion matrix, and the calibration when
    the rows are probabilities (non-negative, summing to 1). The result becomes the job's
    evaluation; ``test_accuracy`` is logged."""
    current = session()
    pred = np.asarray(y_pred.detach().cpu() if isinstance(y_pred, torch.Tensor) else y_pred)
    probabilities = None
    if pred.ndim == 2:
        probabilities = pred if _are_probabilities(pred) else None
        pred = pred.argmax(axis=1)
    truth = np.asarray(y_true.detach().cpu() if isinstance(y_true, torch.Tensor) else y_true)
    result = score(truth, pred, current.data.classes, probabilities)
    current.evaluation = result
    log(max(current.logged_step, 1), test_accuracy=result["accuracy"])
    return result


def _are_probabilities(scores: np.ndarray) -> bool:
    """Rows of probabilities (calibration is reported for them), not logits."""
    values = scores.astype(np.float64, copy=False)
    return bool(
        values.size
        and np.isfinite(values).all()
        and values.min() >= 0
        and np.allclose(values.sum(axis=1), 1.0, atol=1e-4)
    )


# -- local mode -------------------------------------------------------------------------


@dataclass
class LocalReporter:
    """Local mode: metrics are printed, the checkpoint is one file in ``directory``."""

    directory: Path
    last_step: int = 0

    @property
    def path(self) -> Path:
        return self.directory / "checkpoint.safetensors"

    def log(self, step: int, **metrics: float) -> None:
        print(format_metrics("step", step, None, metrics), flush=True)

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.save_at(self.last_step + 1, state)

    def save_at(self, step: int, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(checkpoint_to_bytes({"step": step, "state": state}))
        os.replace(tmp, self.path)
        self.last_step = step

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        saved = checkpoint_from_bytes(self.path.read_bytes())
        self.last_step = int(saved["step"])
        return dict(saved["state"])


def local_session(environ: Mapping[str, str]) -> Session:
    """A session for running a script by hand (see the module docstring)."""
    run_dir = Path(environ.get("NIMBUS_JOB_DIR") or LOCAL_DIR)
    dataset_dir = environ.get("NIMBUS_DATASET_DIR")

    def load() -> DataSplits:
        if not dataset_dir:
            raise InvalidInput(
                "nr.dataset() outside a job reads NIMBUS_DATASET_DIR: a directory written by "
                "`nimbus datasets download NAME:V DIR`"
            )
        return load_local_dataset(Path(dataset_dir))

    return Session(
        params=coerce_params(_local_params(environ.get("NIMBUS_PARAMS"))),
        reporter=LocalReporter(run_dir),
        load_data=load,
        model_dir=run_dir / "model",
    )


def load_local_dataset(directory: Path) -> DataSplits:
    """The splits of a downloaded dataset version: ``*.npy`` files plus ``version.json``."""
    try:
        version = json.loads((directory / "version.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {directory / 'version.json'}: {exc}") from None
    schema = version.get("schema") or {}
    return DataSplits.load(
        directory,
        Task(version["task"]),
        list(version["classes"]),
        schema.get("features"),
        schema.get("transform"),
        groups=schema.get("groups"),
    )


def _local_params(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        text = raw if raw.lstrip().startswith("{") else Path(raw).read_text(encoding="utf-8")
        value = json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"NIMBUS_PARAMS: not a JSON object or a JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("NIMBUS_PARAMS must hold a JSON object")
    return value


def coerce_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Params of a script as JSON values: ``--param epochs=3`` arrives as the string "3" and
    becomes 3; strings that are not JSON ("adam") stay strings."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[str(key)] = value
    return out
