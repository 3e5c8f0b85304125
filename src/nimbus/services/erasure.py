"""The right to erasure: a dataset version and everything made from it, gone from storage.

What derives from a version: the jobs that trained on it (their artifacts, checkpoints and
logs: a script may have printed or saved its data) and the model versions registered from
those jobs (their files). :meth:`ErasureService.derived` lists it, with a fingerprint of the
list; :meth:`ErasureService.purge`, given that fingerprint (what the person confirmed),
deletes all of it in one transaction and the blobs nothing else holds, then and there.
Refused, with nothing deleted: while a derived model version is deployed, while a derived
job is queued or running, or when the list changed since it was shown. What stays: the
jobs' rows with their metrics and evaluation (aggregate figures, no example), and the audit
log's record that the purge happened (the request, never the data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from nimbus.db import blobrefs
from nimbus.db import datasets as dataset_repo
from nimbus.db import deployments as deployment_repo
from nimbus.db import registry as model_repo
from nimbus.db.engine import Database
from nimbus.db.tables import (
    JobArtifactRow,
    JobCheckpointRow,
    JobLogRow,
    JobRow,
    ModelRow,
    ModelVersionRow,
    utcnow,
)
from nimbus.errors import Conflict, NotFound
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import delete_quietly
from nimbus.services.job_api import JOB_ARTIFACT, JOB_CHECKPOINT
from nimbus.services.models import MODEL_VERSION
from nimbus.storage.blobs import BlobStore
from nimbus.wire.datasets import Derived, Purged

UNFINISHED = ("queued", "running")


@dataclass
class _Found:
    version: Any  # the DatasetVersion row
    jobs: list[JobRow]
    models: list[tuple[ModelRow, ModelVersionRow]]
    deployments: list[str]

    def derived(self, ref: str) -> Derived:
        body: dict[str, Any] = {
            "dataset": ref,
            "jobs": sorted(job.id for job in self.jobs),
            "model_versions": sorted(f"{m.name}:{v.version}" for m, v in self.models),
            "deployments": sorted(self.deployments),
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return Derived(**body, fingerprint=digest[:16])


class ErasureService:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def derived(self, principal: Principal, name: str, version: int) -> Derived:
        """What purging ``name:version`` would delete (viewer role)."""
        with self.db.session() as session:
            return self._find(session, principal, name, version).derived(f"{name}:{version}")

    def purge(self, principal: Principal, name: str, version: int, confirm: str) -> Purged:
        """Delete the version, its derived model versions and its jobs' artifacts, logs and
        checkpoints, as listed by :meth:`derived` with fingerprint ``confirm``."""
        require_role(principal, Role.MEMBER)
        ref = f"{name}:{version}"
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            found = self._find(session, principal, name, version)
            listed = found.derived(ref)
            if confirm != listed.fingerprint:
                raise Conflict(
                    f"what purging {ref} deletes is not what was confirmed (it changed, or "
                    f"the confirmation is wrong): list it again, then confirm "
                    f"{listed.fingerprint}"
                )
            if found.deployments:
                raise Conflict(
                    f"{ref}'s models are served by deployment(s) "
                    f"{', '.join(found.deployments)}: delete them first"
                )
            busy = sorted(job.id for job in found.jobs if job.state in UNFINISHED)
            if busy:
                raise Conflict(f"jobs on {ref} are still queued or running: cancel {busy[0]}")
            orphans: list[str] = []
            for model, row in found.models:
                model_repo.remove_aliases_to(
                    session, model.id, row.version, principal.token_id, utcnow()
                )
                orphans += blobrefs.release(session, MODEL_VERSION, row.id)
                model_repo.delete_version(session, row)
            job_ids = [job.id for job in found.jobs]
            orphans += self._drop_job_outputs(session, job_ids)
            orphans += blobrefs.release(session, blobrefs.DATASET_VERSION, found.version.id)
            dataset_repo.delete_version(session, found.version)
            gone = sorted(set(blobrefs.unreferenced(session, orphans)))
            delete_quietly(self.blobs, gone)
        return Purged(**listed.model_dump(), deleted_blobs=len(gone))

    @staticmethod
    def _drop_job_outputs(session: Session, job_ids: list[str]) -> list[str]:
        if not job_ids:
            return []
        orphans: list[str] = []
        artifacts = select(JobArtifactRow.id).where(JobArtifactRow.job_id.in_(job_ids))
        for artifact_id in session.scalars(artifacts).all():
            orphans += blobrefs.release(session, JOB_ARTIFACT, artifact_id)
        checkpoints = select(JobCheckpointRow.id).where(JobCheckpointRow.job_id.in_(job_ids))
        for checkpoint_id in session.scalars(checkpoints).all():
            orphans += blobrefs.release(session, JOB_CHECKPOINT, checkpoint_id)
        session.execute(delete(JobArtifactRow).where(JobArtifactRow.job_id.in_(job_ids)))
        session.execute(delete(JobCheckpointRow).where(JobCheckpointRow.job_id.in_(job_ids)))
        session.execute(delete(JobLogRow).where(JobLogRow.job_id.in_(job_ids)))
        session.flush()
        return orphans

    @staticmethod
    def _find(session: Session, principal: Principal, name: str, version: int) -> _Found:
        validate_name(name, "dataset name")
        dataset = dataset_repo.get_dataset(session, principal.tenant_id, name)
        row = dataset_repo.get_version(session, dataset.id, version) if dataset else None
        if row is None:
            raise NotFound(f"dataset {name!r} has no version {version}")
        jobs = [
            job
            for job in session.scalars(
                select(JobRow).where(JobRow.tenant_id == principal.tenant_id)
            )
            if _reads(job, name, version)
        ]
        ids = {job.id for job in jobs}
        models = (
            list(
                session.execute(
                    select(ModelRow, ModelVersionRow)
                    .join(ModelVersionRow, ModelVersionRow.model_id == ModelRow.id)
                    .where(ModelRow.tenant_id == principal.tenant_id)
                    .where(ModelVersionRow.job_id.in_(ids))
                ).tuples()
            )
            if ids
            else []
        )
        deployments = [
            user for _, v in models for user in deployment_repo.users_of_version(session, v.id)
        ]
        return _Found(row, jobs, models, deployments)


def _reads(job: JobRow, name: str, version: int) -> bool:
    dataset = (job.inputs or {}).get("dataset") or {}
    return bool(dataset.get("dataset") == name and dataset.get("version") == version)
