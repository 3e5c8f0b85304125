"""What the registry and deployment tests share (no tests here): model directories made by
the real exporter, and succeeded jobs written straight into a server's metadata and blob
stores, as a job's runtime would have left them."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from nimbus.db import blobrefs, tenants
from nimbus.db import jobs as jobs_repo
from nimbus.db.engine import Database
from nimbus.db.tables import JobArtifactRow, JobRow
from nimbus.jobs.domain import JobSpec, JobState
from nimbus.modelformat.export import export_model
from nimbus.modelformat.files import MODEL_FILES
from nimbus.runtime.architectures import build_model
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store

API_ONLY = {"NIMBUS_SCHEDULER_ENABLED": "false"}
SHAPE = (6, 6, 1)
CLASSES = ["cat", "dog", "eel"]
_SIGNATURE = {"name": "input", "datatype": "UINT8", "shape": [-1, *SHAPE]}
IMAGE_SPEC: dict[str, Any] = {
    "format_version": 1,
    "task": "image-classification",
    "architecture": "cnn",
    "arch_params": {
        "in_channels": 1,
        "height": 6,
        "width": 6,
        "num_classes": 3,
        "conv_channels": 4,
        "hidden": 8,
    },
    "classes": CLASSES,
    "input": _SIGNATURE,
    "onnx_input": _SIGNATURE,
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ],
    "preprocessing": {
        "kind": "image",
        "scale": 1 / 255,
        "mean": [0.5],
        "std": [0.25],
        "height": 6,
        "width": 6,
        "channels": 1,
    },
}


def image_model_dir(directory: Path, seed: int) -> Path:
    """A CNN model directory written by ``nimbus.modelformat.export`` (weights from ``seed``)."""
    torch.manual_seed(seed)
    model = build_model(copy.deepcopy(IMAGE_SPEC)).eval()
    with torch.no_grad():  # spread the weights so classes differ clearly
        for p in model.parameters():
            p.mul_(3.0)
    example = np.random.default_rng(seed).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    export_model(model, copy.deepcopy(IMAGE_SPEC), example, directory)
    return directory


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, *SHAPE), dtype=np.uint8)


def onnx_probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """What ``model.onnx`` answers, straight from ONNX Runtime."""
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(["probabilities"], {"input": x})[0])


def npz_dataset(rows: int = 60, seed: int = 0) -> bytes:
    """An image dataset of the model's shape: uint8 [N, 6, 6, 1], three labels."""
    buffer = io.BytesIO()
    np.savez(buffer, x=images(rows, seed), y=np.arange(rows) % 3)
    return buffer.getvalue()


def insert_job(home: Path, tenant: str, model_dir: Path | None, **kw: Any) -> str:
    """:func:`add_job` into the SQLite and blob stores of the server at ``home``."""
    db = Database(f"sqlite:///{home / 'nimbus.db'}")
    blobs = BlobStore(open_object_store(f"file://{home / 'blobs'}"), home / "tmp" / "staging")
    try:
        return add_job(db, blobs, tenant, model_dir, **kw)
    finally:
        db.dispose()


def add_job(
    db: Database,
    blobs: BlobStore,
    tenant: str,
    model_dir: Path | None,
    *,
    state: JobState = JobState.SUCCEEDED,
    evaluation: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    files: tuple[str, ...] = MODEL_FILES,
) -> str:
    """A finished job of ``tenant`` with ``model_dir``'s files as its artifacts (stored
    blobs, held by job-artifact references), as a job's runtime leaves it."""
    refs = {name: blobs.put_file(model_dir / name) for name in files} if model_dir else {}
    snapshot = dataset or {"dataset": "digits", "version": 1, "content_hash": "c" * 64}
    now = datetime.now(UTC)
    with db.session(write=True) as session:
        blobrefs.lock(session)
        tenant_id = tenants.get_or_create(session, tenant).id
        spec = JobSpec(
            model="cnn",
            dataset=f"{snapshot['dataset']}:{snapshot['version']}",
            params={"epochs": 1},
            seed=7,
        )
        job = jobs_repo.submit(session, tenant_id, spec, now, inputs={"dataset": snapshot})
        row = session.get(JobRow, job.id)
        assert row is not None
        row.state, row.finished_at, row.attempts = state.value, now, 1
        row.result = {"evaluation": evaluation or {"accuracy": 0.5, "support": 10}}
        for name, ref in refs.items():
            artifact = JobArtifactRow(
                job_id=job.id,
                attempt_number=1,
                name=name,
                blob_key=ref.key,
                size=ref.size,
                created_at=now,
            )
            session.add(artifact)
            session.flush()
            blobrefs.add(session, "job_artifact", artifact.id, [ref.key])
        return job.id


def drop_job_artifacts(home: Path, job_id: str) -> list[str]:
    """What deleting a job would do to its artifacts: rows and their references go."""
    db = Database(f"sqlite:///{home / 'nimbus.db'}")
    try:
        with db.session(write=True) as session:
            rows = list(session.query(JobArtifactRow).filter(JobArtifactRow.job_id == job_id))
            orphans: list[str] = []
            for row in rows:
                orphans += blobrefs.release(session, "job_artifact", row.id)
                session.delete(row)
            return orphans
    finally:
        db.dispose()
