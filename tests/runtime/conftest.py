"""Runtime fixtures: a fake job_api per test (``harness``) and local mode (``local``).

Runtime tests share two cores: one intra-op thread keeps them quick and reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nimbus.runtime import api
from tests.runtime import synthetic
from tests.runtime.helpers import Harness, running, write_dataset

torch.set_num_threads(1)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A fresh fake job_api on a port for one test, and the environment to reach it."""
    with running(tmp_path) as started:
        yield started


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Local mode on tiny images, params inline; yields the run directory."""
    monkeypatch.delenv("NIMBUS_JOB_TOKEN", raising=False)
    monkeypatch.setenv(
        "NIMBUS_DATASET_DIR", str(write_dataset(synthetic.tiny_images(), tmp_path / "data"))
    )
    monkeypatch.setenv("NIMBUS_PARAMS", '{"epochs": "3", "optimizer": "adam"}')
    monkeypatch.setenv("NIMBUS_JOB_DIR", str(tmp_path / "run"))
    api.activate(None)
    yield tmp_path / "run"
    api.activate(None)
