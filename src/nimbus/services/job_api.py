"""What a job's own process may do, with its job-scoped token: read its spec and input
blobs, renew its lease, report metrics, progress, checkpoints, artifacts and its result.

A token is minted per attempt (see :mod:`nimbus.jobs.tokens`); only its hash is stored.
It works only on its own attempt's routes, and only while that attempt is the job's
running attempt: a stale attempt (replaced, ended, fenced) gets 409. Blobs a job writes
are pinned before they are stored and then held by a reference owned by their record
(checkpoint or artifact), so no deletion can take them in between.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nimbus.db import blobrefs, job_details, job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.errors import InvalidInput, NotFound, PayloadTooLarge, Unauthorized
from nimbus.jobs.domain import Attempt, AttemptState, Fenced, Job, JobState
from nimbus.jobs.tokens import TOKEN_PREFIX
from nimbus.modelformat.files import MODEL_FILES
from nimbus.security import hash_token
from nimbus.services.blobs import delete_quietly, discard, move_in, pin
from nimbus.services.jobs import finite
from nimbus.services.quotas import QuotaService, human_bytes
from nimbus.storage.blobs import BlobStore
from nimbus.wire import job_api as wire

JOB_CHECKPOINT = "job_checkpoint"  # blob reference owner kinds: the row holding the blob
JOB_ARTIFACT = "job_artifact"
KEEP_CHECKPOINTS = 2  # older checkpoints of a job are deleted (the latest is what resumes)
ARTIFACT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_METRICS = 1000
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")
_METRIC_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./:-]{0,127}$")


@dataclass(frozen=True)
class AttemptContext:
    """The attempt a request acts for (authenticated, current)."""

    job: Job
    attempt: Attempt


@dataclass(frozen=True)
class BlobDownload:
    key: str
    size: int
    chunks: Iterator[bytes]


def validate_artifact_name(name: str) -> str:
    if name not in MODEL_FILES and (
        "/" in name or not ARTIFACT_NAME_RE.match(name) or ".." in name
    ):
        raise InvalidInput(
            f"invalid artifact name {name[:80]!r}: use {', '.join(MODEL_FILES)} or 1-63 "
            "characters of a-z, 0-9, '.', '_', '-'",
            field="name",
        )
    return name


class JobApiService:
    """Serves job processes; every method takes the :class:`AttemptContext` of
    :meth:`authenticate`."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        lease_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        quotas: QuotaService | None = None,
        max_artifact_bytes: int | None = None,
        max_artifacts: int | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        # Told the job's id and the metrics' names once a step's are stored (a study judges
        # its trials' epochs as they come: server.py).
        self.on_metrics: list[Callable[[str, Collection[str]], object]] = []
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.quotas = quotas
        self.max_artifact_bytes = max_artifact_bytes
        self.max_artifacts = max_artifacts

    def authenticate(self, secret: str | None, attempt_id: str) -> AttemptContext:
        """401 unless ``secret`` is the job token of ``attempt_id``; 409 (fenced) when that
        attempt is no longer its job's running attempt."""
        if not secret or not _TOKEN_RE.match(secret):
            raise Unauthorized("missing or invalid job token")
        with self.db.session() as session:
            found = repo.attempt_by_token(session, hash_token(secret))
        if found is None:
            raise Unauthorized("invalid job token")
        job, attempt = found
        if attempt.id != attempt_id:
            raise Unauthorized("this job token belongs to another attempt")
        if (
            attempt.state is not AttemptState.RUNNING
            or job.current_attempt_id != attempt.id
            or job.state is not JobState.RUNNING
        ):
            raise Fenced(
                f"attempt {attempt.id} is no longer the job's running attempt "
                f"(it is {attempt.state.value})",
                attempt_id=attempt.id,
            )
        return AttemptContext(job, attempt)

    # -- reads --------------------------------------------------------------------------

    def _inputs(self, ctx: AttemptContext) -> dict[str, Any]:
        with self.db.session() as session:
            return job_details.inputs(session, ctx.job.id)

    def spec(self, ctx: AttemptContext) -> wire.AttemptSpec:
        """What the runtime needs to run the attempt."""
        job, attempt = ctx.job, ctx.attempt
        inputs = self._inputs(ctx)
        code = inputs.get("code")
        res = job.spec.resources
        return wire.AttemptSpec(
            job_id=job.id,
            attempt_id=attempt.id,
            attempt=attempt.number,
            model=job.spec.model,
            params=job.spec.params,
            seed=job.spec.seed,
            workers=res.workers,
            resources=wire.Resources(
                cpus=res.cpus, gpus=res.gpus, memory=res.memory_bytes, workers=res.workers
            ),
            dataset=inputs.get("dataset"),
            code=(
                wire.CodeInput(
                    key=code["key"], entry=code["entry"], format=code["format"], size=code["size"]
                )
                if code
                else None
            ),
        )

    def input_blobs(self, job_id: str, *, with_source: bool = True) -> dict[str, int]:
        """The blobs a job may read (its dataset version's files and its code): key -> size.
        Without ``with_source``, the dataset's uploaded source is left out (training reads
        the prepared arrays): what a node fetches ahead of the job."""
        with self.db.session() as session:
            inputs = job_details.inputs(session, job_id)
        files = (inputs.get("dataset") or {}).get("files") or {}
        allowed = {
            entry["key"]: int(entry["size"])
            for name, entry in files.items()
            if with_source or name != "source"
        }
        if inputs.get("code"):
            allowed[inputs["code"]["key"]] = int(inputs["code"]["size"])
        return allowed

    def prefetch_blobs(self, job_id: str) -> dict[str, int]:
        """What a node fetches ahead of an attempt: the inputs training reads (not the
        dataset's uploaded source) and the latest checkpoint, which a retried attempt
        resumes from."""
        wanted = self.input_blobs(job_id, with_source=False)
        with self.db.session() as session:
            found = job_outputs.latest_checkpoint(session, job_id)
        if found is not None:
            wanted[found.blob_key] = self.blobs.size(found.blob_key)
        return wanted

    def blob(self, ctx: AttemptContext, key: str) -> BlobDownload:
        """A blob of the job's dataset version or code, or its latest checkpoint, verified
        before the first byte."""
        allowed = self.input_blobs(ctx.job.id)
        if key not in allowed:
            with self.db.session() as session:
                found = job_outputs.latest_checkpoint(session, ctx.job.id)
            if found is None or found.blob_key != key:
                raise NotFound(f"blob {key[:100]!r} is not an input of job {ctx.job.id}")
            allowed = {key: self.blobs.size(key)}
        self.blobs.verify(key)
        return BlobDownload(key, allowed[key], self.blobs.iter_verified(key))

    def latest_checkpoint_ref(self, ctx: AttemptContext) -> wire.StoredCheckpoint:
        """Which blob the job's most advanced complete checkpoint is (any attempt's)."""
        with self.db.session() as session:
            found = job_outputs.latest_checkpoint(session, ctx.job.id)
        if found is None:
            raise NotFound(f"job {ctx.job.id} has no checkpoint yet")
        key = found.blob_key
        return wire.StoredCheckpoint(step=found.step, key=key, size=self.blobs.size(key))

    def latest_checkpoint(self, ctx: AttemptContext) -> tuple[int, BlobDownload]:
        """The job's most advanced complete checkpoint, from any of its attempts."""
        with self.db.session() as session:
            found = job_outputs.latest_checkpoint(session, ctx.job.id)
        if found is None:
            raise NotFound(f"job {ctx.job.id} has no checkpoint yet")
        self.blobs.verify(found.blob_key)
        size = self.blobs.size(found.blob_key)
        return found.step, BlobDownload(
            found.blob_key, size, self.blobs.iter_verified(found.blob_key)
        )

    # -- writes -------------------------------------------------------------------------

    def heartbeat(self, ctx: AttemptContext) -> wire.HeartbeatReply:
        """Extend the attempt's lease; tells the runtime whether to stop (cancelled)."""
        with self.db.session(write=True) as session:
            lease = repo.heartbeat(session, ctx.attempt.id, self.clock(), self.lease_seconds)
        return wire.HeartbeatReply(cancel=lease.cancel_requested)

    def metrics(self, ctx: AttemptContext, report: wire.MetricsRequest) -> None:
        """Record the values of one step; names are checked, at most MAX_METRICS a call."""
        values = report.metrics
        if len(values) > MAX_METRICS:
            raise InvalidInput(f"at most {MAX_METRICS} metrics per call", field="metrics")
        for name in values:
            if not _METRIC_NAME_RE.match(name):
                raise InvalidInput(f"invalid metric name {name[:80]!r}", field="metrics")
        with self.db.session(write=True) as session:
            job_outputs.add_metrics(
                session,
                ctx.attempt.id,
                [(report.step, name, float(v)) for name, v in values.items()],
                self.clock(),
            )
        for tell in self.on_metrics:
            tell(ctx.job.id, values.keys())

    def progress(self, ctx: AttemptContext, report: wire.ProgressRequest) -> None:
        """Replace the job's progress (what ``Job.progress`` and the log stream show)."""
        with self.db.session(write=True) as session:
            job_outputs.set_progress(session, ctx.attempt.id, report.model_dump())

    def result(self, ctx: AttemptContext, report: wire.ResultRequest) -> None:
        """The job's evaluation (NaN and infinities become null)."""
        evaluation = finite(report.evaluation)
        with self.db.session(write=True) as session:
            job_outputs.set_result(session, ctx.attempt.id, {"evaluation": evaluation})

    def put_checkpoint(
        self, ctx: AttemptContext, step: int, epoch: int | None, path: Path, sha256: str, size: int
    ) -> wire.StoredCheckpoint:
        """Store a staged checkpoint (``path`` consumed), then record it complete: a reader
        never sees a checkpoint whose bytes are not whole. Older ones are pruned."""
        if step < 0:
            raise InvalidInput("a checkpoint step is >= 0", field="step")

        def record(session: Any, key: str) -> list[str]:
            checkpoint_id = job_outputs.record_checkpoint(
                session, ctx.attempt.id, step=step, blob_key=key, now=self.clock(), epoch=epoch
            )
            blobrefs.add(session, JOB_CHECKPOINT, checkpoint_id, [key])
            orphans: list[str] = []
            for old in job_outputs.prune_checkpoints(session, ctx.job.id, KEEP_CHECKPOINTS):
                orphans += blobrefs.release(session, JOB_CHECKPOINT, old)
            return orphans

        key = self._store(ctx, path, sha256, size, record)
        return wire.StoredCheckpoint(step=step, key=key, size=size)

    def check_artifact_size(self, size: int) -> None:
        """413 for an artifact over the per-artifact limit (before or after its upload)."""
        limit = self.max_artifact_bytes
        if limit is not None and size > limit:
            raise PayloadTooLarge(
                f"an artifact of {human_bytes(size)} is over the limit of {human_bytes(limit)}"
                f" per artifact (NIMBUS_MAX_ARTIFACT_BYTES={limit})",
                limit=limit,
            )

    def check_artifact_quota(self, ctx: AttemptContext, name: str, size: int) -> None:
        """507 for an artifact of ``size`` bytes (declared, before its upload) that the
        tenant's storage quota cannot take, less what a file of that name frees."""
        if self.quotas is None:
            return
        with self.db.session() as session:
            stored = job_outputs.list_artifacts(session, ctx.job.id)
            replaced = sum(int(a["size"]) for a in stored if a["name"] == name)
            self.quotas.check_bytes(
                session, ctx.job.tenant_id, size - replaced, f"artifact {name!r}"
            )

    def put_artifact(
        self, ctx: AttemptContext, name: str, path: Path, sha256: str, size: int
    ) -> wire.Artifact:
        """Store a staged output file (``path`` consumed) under ``name``, replacing an
        earlier attempt's file of that name. Refused, with nothing kept: an artifact over
        the size limit or past the job's count limit (413), or past the tenant's storage
        quota (507)."""
        validate_artifact_name(name)
        try:
            self.check_artifact_size(size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

        def record(session: Any, key: str) -> list[str]:
            stored = job_outputs.list_artifacts(session, ctx.job.id)
            existing = {artifact["name"]: artifact["size"] for artifact in stored}
            if (
                self.max_artifacts is not None
                and name not in existing
                and len(existing) >= self.max_artifacts
            ):
                raise PayloadTooLarge(
                    f"job {ctx.job.id} has {len(existing)} artifacts, the limit per job "
                    f"(NIMBUS_MAX_ARTIFACTS_PER_JOB={self.max_artifacts})",
                    limit=self.max_artifacts,
                )
            if self.quotas is not None:
                adding = size - int(existing.get(name, 0))  # a replaced file frees its bytes
                self.quotas.check_bytes(session, ctx.job.tenant_id, adding, f"artifact {name!r}")
            artifact_id, replaced = job_outputs.add_artifact(
                session, ctx.attempt.id, name, key, size, self.clock()
            )
            blobrefs.add(session, JOB_ARTIFACT, artifact_id, [key])
            orphans: list[str] = []
            for old in replaced:
                orphans += blobrefs.release(session, JOB_ARTIFACT, old)
            return orphans

        key = self._store(ctx, path, sha256, size, record)
        return wire.Artifact(name=name, key=key, size=size)

    def _store(
        self,
        ctx: AttemptContext,
        path: Path,
        sha256: str,
        size: int,
        record: Callable[[Any, str], list[str]],
    ) -> str:
        """Pin, store (as the job's tenant's), then record (``record`` adds the owner's
        reference and returns keys it left unreferenced) and unpin in one transaction;
        undo everything on failure."""
        blobs = self.blobs.for_tenant(ctx.job.tenant_id)
        key = blobs.key_for(sha256)
        try:
            pin_id = pin(self.db, [key])
            try:
                move_in(blobs, path, sha256, size)
                with self.db.session(write=True) as session:
                    blobrefs.lock(session)
                    orphans = record(session, key)
                    blobrefs.unpin(session, pin_id, [key])
                    delete_quietly(self.blobs, blobrefs.unreferenced(session, orphans))
            except BaseException:
                discard(self.db, self.blobs, [key], pin_id)  # the transaction rolled back
                raise
            return key
        finally:
            path.unlink(missing_ok=True)
