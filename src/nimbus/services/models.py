"""The model registry: register a succeeded job's model as a version, read versions, move
aliases (with history), download files (verified), delete versions.

A version's files are the job's artifacts, held from registration on by blob references
owned by the version: deleting the job leaves the model intact. Registration checks the
files first (:mod:`nimbus.modelformat.verify`: hashes, spec, ONNX graph, sample inferences and,
for built-in models, the accuracy the job recorded on its test split), in a limited child
process (:class:`ModelCheck`), never in the control plane's own.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import nimbus
from nimbus.db import blobrefs, job_details
from nimbus.db import deployments as deployment_repo
from nimbus.db import registry as repo
from nimbus.db import tokens as token_repo
from nimbus.db.engine import Database
from nimbus.db.job_details import JobDetail
from nimbus.db.tables import ModelAliasEventRow, ModelRow, ModelVersionRow, utcnow
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.jobs.domain import JobState
from nimbus.modelformat.files import (
    MODEL_FILES,
    ONNX_FILE,
    PROGRAM_FILES,
    SPEC_FILE,
    WEIGHTS_FILE,
)
from nimbus.modelformat.verify import recorded_accuracy
from nimbus.names import parse_reference, validate_alias, validate_name, version_number
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import FileDownload, delete_quietly, verified_download
from nimbus.services.card_content import card_text
from nimbus.services.code import is_code_ref
from nimbus.services.isolated import LimitedRunner, Limits, json_reply, limit_text
from nimbus.services.jobs import finite
from nimbus.storage.blobs import BlobStore, digest_of
from nimbus.wire.cards import CardText
from nimbus.wire.models import (
    AliasChange,
    AliasEvent,
    Model,
    ModelDataset,
    ModelFile,
    ModelSummary,
    ModelVersion,
)

log = logging.getLogger(__name__)

MODEL_VERSION = "model_version"  # blob reference owner kind
MAX_TEST_ROWS = 100_000  # larger test splits are not re-scored at registration


@dataclass(frozen=True)
class ModelFiles:
    """What registration checks: the model's files by name (``spec.json``,
    ``weights.safetensors``, ``model.onnx``) on local disk and, when the job recorded an
    accuracy on its dataset's test split, that split's x and y files and the accuracy."""

    paths: dict[str, Path]
    test_split: tuple[Path, Path] | None = None
    recorded_accuracy: float | None = None


CheckFn = Callable[[ModelFiles], dict[str, Any]]


class ModelCheck:
    """The registration check (:mod:`nimbus.modelformat.verify`) in a limited child
    (:mod:`nimbus.modelformat.verify_child`, run by :mod:`nimbus.services.isolated`): the
    job chose the ONNX graph, and a graph can loop as long as it likes or allocate what it
    likes. One that passes no verdict within the limits is refused (400, naming the
    limit)."""

    def __init__(self, runner: LimitedRunner | None = None, limits: Limits | None = None):
        self.runner = runner if runner is not None else LimitedRunner()
        self.limits = limits if limits is not None else Limits(wall_seconds=30, cpu_seconds=30)

    def __call__(self, files: ModelFiles) -> dict[str, Any]:
        """The parsed spec of a model that passed; InvalidInput saying why otherwise."""
        argv = [self.runner.python, "-s", "-m", "nimbus.modelformat.verify_child"]
        inputs = [files.paths[SPEC_FILE], files.paths[WEIGHTS_FILE], files.paths[ONNX_FILE]]
        if files.test_split is not None and files.recorded_accuracy is not None:
            argv += ["--accuracy", repr(files.recorded_accuracy)]
            inputs += list(files.test_split)
        # The child imports the Nimbus this server runs, wherever it was found (an installed
        # package, or a source tree on PYTHONPATH): nothing else of the server's environment.
        where = {"PYTHONPATH": str(Path(nimbus.__file__).parent.parent)}
        outcome = self.runner.run(argv, limits=self.limits, inputs=inputs, env=where)
        reply = json_reply(outcome)
        limit = outcome.limit or (reply or {}).get("limit")
        if limit:
            raise InvalidInput(
                f"{ONNX_FILE} was not verified within the {limit_text(str(limit), self.limits)}"
                " for checking a model at registration",
                field="job",
            )
        if reply is None:
            stderr = outcome.stderr[-2000:].decode(errors="replace")
            log.error("the model check exited %s: %s", outcome.returncode, stderr)
            raise InvalidInput(
                f"the model could not be verified (the check exited {outcome.returncode})",
                field="job",
            )
        if "spec" not in reply:
            raise InvalidInput(str(reply.get("error") or "the model failed verification"))
        spec: dict[str, Any] = reply["spec"]
        return spec


@dataclass(frozen=True)
class VersionRef:
    """A version of one model: a number, an alias, or the latest (both None)."""

    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"@{self.alias}"
        return "latest" if self.version is None else str(self.version)


def parse_version_ref(text: str) -> VersionRef:
    """``3``, ``latest`` or ``@production``; anything else is a 400."""
    if text.startswith("@"):
        return VersionRef(alias=validate_alias(text[1:]))
    if text == "latest":
        return VersionRef()
    if (number := version_number(text)) is not None:
        return VersionRef(version=number)
    raise InvalidInput(
        f"invalid version {text[:40]!r}: use a positive integer, 'latest' or '@alias'"
    )


def parse_model_ref(ref: str) -> tuple[str, VersionRef]:
    """``NAME`` (latest), ``NAME:V``, ``NAME:latest`` or ``NAME@ALIAS``."""
    found = parse_reference(ref, "model", aliases=True)
    version = found.version if isinstance(found.version, int) else None
    return found.name, VersionRef(version=version, alias=found.alias)


@dataclass(frozen=True)
class RegisterResult:
    """The registered version, and whether this call created it."""

    version: ModelVersion
    created: bool


@dataclass(frozen=True)
class VersionPage:
    """A model with a page of its versions (newest first) and how many it has in all."""

    name: str
    created_at: datetime
    versions: list[ModelVersion]
    total: int
    aliases: dict[str, int]
    alias_history: list[AliasEvent]  # the latest moves, newest first
    alias_moves: int  # how many there are in all
    token_names: dict[str, str]  # who moved aliases or registered the versions shown


@dataclass(frozen=True)
class ResolvedVersion:
    """A model version a deployment can serve."""

    id: int
    model: str
    version: int
    files: dict[str, Any]


def version_view(row: ModelVersionRow, model: str, aliases: list[str]) -> ModelVersion:
    """A stored version as the API shows it, with the aliases naming it."""
    return ModelVersion(
        model=model,
        version=row.version,
        job=row.job_id,
        dataset=ModelDataset.model_validate(row.dataset),
        code_hash=row.code_hash,
        params=row.params,
        seed=row.seed,
        metrics=row.metrics,
        spec=row.spec,
        files={name: ModelFile.model_validate(entry) for name, entry in row.files.items()},
        aliases=sorted(aliases),
        created_at=row.created_at,
        created_by=row.created_by,
        lineage="trained" if row.job_id is not None else "imported",
    )


def alias_event_view(event: ModelAliasEventRow) -> AliasEvent:
    """One move of an alias, from the history."""
    return AliasEvent(
        alias=event.alias,
        version=event.version,
        from_version=event.from_version,
        at=event.at,
        by=event.by,
    )


def _lineage(detail: JobDetail) -> dict[str, Any]:
    """Dataset, code hash, params and seed of the job, as resolved when it was submitted."""
    job = detail.job
    dataset = detail.inputs.get("dataset") or {}
    if dataset:
        ds = {
            "name": dataset.get("dataset"),
            "version": dataset.get("version"),
            "content_hash": dataset.get("content_hash"),
        }
    else:
        name, _, number = (job.spec.dataset or "").partition(":")
        ds = {
            "name": name or None,
            "version": version_number(number),
            "content_hash": None,
        }
    code = detail.inputs.get("code")
    return {
        "dataset": ds,
        "code_hash": digest_of(code["key"]) if code and code.get("key") else None,
        "params": dict(job.spec.params),
        "seed": job.spec.seed,
        "metrics": finite((job.result or {}).get("evaluation")),
    }


class ModelService:
    """Models of every tenant; each method acts for one principal, within its tenant."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        tmp_dir: Path,
        check: CheckFn | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.tmp_dir = Path(tmp_dir)
        self.check: CheckFn = check if check is not None else ModelCheck()
        self.clock = clock

    # -- register -----------------------------------------------------------------------

    def register(
        self, principal: Principal, name: str, job_id: str, card: CardText | None = None
    ) -> RegisterResult:
        """A new version of ``name`` from a succeeded job of the caller's tenant (checked
        first), its model card starting with ``card``'s text; the version already
        registered from that job if there is one (unchanged: its card is edited apart)."""
        require_role(principal, Role.MEMBER)
        validate_name(name, "model name")
        with self.db.session() as session:
            detail = job_details.get(session, job_id, principal.tenant_id)
            existing = self._registered(session, principal, name, job_id)
        if existing is not None:
            return RegisterResult(existing, created=False)
        if detail is None:
            raise NotFound(f"job {job_id[:80]!r} not found")
        if detail.job.state is not JobState.SUCCEEDED:
            raise Conflict(
                f"job {job_id} is {detail.job.state.value}: only a succeeded job's model can "
                "be registered"
            )
        files = self._model_files(detail)
        spec = self._check(detail, files)
        for attempt in range(1, 6):
            try:
                return self._commit(principal, name, detail, files, spec, card)
            except IntegrityError:
                if attempt == 5:
                    raise Conflict(f"model {name!r} is being changed concurrently") from None
        raise AssertionError("unreachable")

    def _registered(
        self, session: Session, principal: Principal, name: str, job_id: str
    ) -> ModelVersion | None:
        model = repo.get_model(session, principal.tenant_id, name)
        row = repo.find_by_job(session, model.id, job_id) if model is not None else None
        return self._view(session, model, row) if model is not None and row else None

    @staticmethod
    def _model_files(detail: JobDetail) -> dict[str, dict[str, Any]]:
        artifacts = {a.name: a for a in detail.artifacts}
        missing = [f for f in MODEL_FILES if f not in artifacts]
        if missing:
            raise InvalidInput(
                f"job {detail.job.id} has no model artifacts to register (missing "
                f"{', '.join(missing)})",
                field="job",
            )
        names = list(MODEL_FILES)
        if all(f in artifacts for f in PROGRAM_FILES):  # optional: the gradient program
            names += PROGRAM_FILES
        return {f: {"key": artifacts[f].blob_key, "size": artifacts[f].size} for f in names}

    def _check(self, detail: JobDetail, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Verify every blob against its hash and size, then check the model's files."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="register-", dir=self.tmp_dir) as work:
            cache = Path(work) / "cache"
            paths = {}
            for name, entry in files.items():
                path = self.blobs.local_path(entry["key"], cache)  # hash-verified
                if path.stat().st_size != int(entry["size"]):
                    raise InvalidInput(f"{name} is not the size the job recorded")
                paths[name] = path
            split = None if is_code_ref(detail.job.spec.model) else self._test_split(detail, cache)
            accuracy = None
            if split is not None:
                x, y, rows = split
                accuracy = recorded_accuracy((detail.job.result or {}).get("evaluation"), rows)
            test = (x, y) if split is not None and accuracy is not None else None
            return self.check(ModelFiles(paths, test, accuracy if test else None))

    def _test_split(self, detail: JobDetail, cache: Path) -> tuple[Path, Path, int] | None:
        """The test split of the job's dataset version (x and y files, rows), if its files
        are still stored and it is small enough to re-score."""
        files = (detail.inputs.get("dataset") or {}).get("files") or {}
        if "test_x.npy" not in files or "test_y.npy" not in files:
            return None
        try:
            x, y = (
                self.blobs.local_path(files[f]["key"], cache) for f in ("test_x.npy", "test_y.npy")
            )
            rows = len(np.load(y, mmap_mode="r", allow_pickle=False))  # reads the header
        except (NotFound, OSError, ValueError):
            log.info("job %s: its test split is gone; not re-scored", detail.job.id)
            return None
        return (x, y, rows) if rows <= MAX_TEST_ROWS else None

    def _commit(
        self,
        principal: Principal,
        name: str,
        detail: JobDetail,
        files: dict[str, dict[str, Any]],
        spec: dict[str, Any],
        card: CardText | None,
    ) -> RegisterResult:
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            now = self.clock()
            current = job_details.get(session, detail.job.id, principal.tenant_id)
            if current is None or self._artifact_keys(current) != self._artifact_keys(detail):
                raise Conflict(f"job {detail.job.id}'s model files changed meanwhile; try again")
            model = repo.get_or_create_model(session, principal.tenant_id, name, now)
            same = repo.find_by_job(session, model.id, detail.job.id)
            if same is not None:
                return RegisterResult(self._view(session, model, same), created=False)
            row = repo.create_version(
                session,
                model_id=model.id,
                version=repo.allocate_version_number(session, model),
                job_id=detail.job.id,
                spec=spec,
                files=files,
                created_at=now,
                created_by=principal.token_id,
                card=card_text(card, principal.token_id, now),
                **_lineage(detail),
            )
            blobrefs.add(session, MODEL_VERSION, row.id, [e["key"] for e in files.values()])
            return RegisterResult(version_view(row, name, []), created=True)

    @staticmethod
    def _artifact_keys(detail: JobDetail) -> dict[str, str]:
        names = (*MODEL_FILES, *PROGRAM_FILES)
        return {a.name: a.blob_key for a in detail.artifacts if a.name in names}

    # -- read ---------------------------------------------------------------------------

    def list_models(self, principal: Principal) -> list[ModelSummary]:
        """Every model of the caller's tenant: latest version, version count, aliases."""
        with self.db.session() as session:
            summaries = repo.list_models(session, principal.tenant_id)
            aliases = repo.aliases(session, [s.id for s in summaries])
            return [
                ModelSummary(
                    name=s.name,
                    latest_version=s.latest_version,
                    versions=s.versions,
                    aliases=aliases[s.id],
                    created_at=s.created_at,
                    updated_at=s.updated_at,
                )
                for s in summaries
            ]

    def get_model(self, principal: Principal, name: str) -> Model:
        """A model with all its versions, its aliases and their history."""
        with self.db.session() as session:
            model = self._model(session, principal, name)
            aliases = repo.aliases(session, [model.id])[model.id]
            return Model(
                name=model.name,
                created_at=model.created_at,
                versions=[
                    version_view(r, name, _names_of(aliases, r.version))
                    for r in repo.list_versions(session, model.id)
                ],
                aliases=aliases,
                alias_history=[alias_event_view(e) for e in repo.alias_history(session, model.id)],
            )

    def version_page(
        self, principal: Principal, name: str, offset: int = 0, limit: int = 50
    ) -> VersionPage:
        """A model with one page of its versions, newest first (paged in SQL: a model of
        thousands of versions reads ``limit``), its aliases and their latest ``limit``
        moves, newest first."""
        with self.db.session() as session:
            model = self._model(session, principal, name)
            aliases = repo.aliases(session, [model.id])[model.id]
            rows = repo.list_versions(
                session, model.id, offset=offset, limit=limit, newest_first=True
            )
            events, moves = repo.recent_alias_history(session, model.id, limit)
            history = [alias_event_view(e) for e in events]
            who = {e.by for e in history if e.by} | {r.created_by for r in rows if r.created_by}
            return VersionPage(
                name=model.name,
                created_at=model.created_at,
                versions=[version_view(r, name, _names_of(aliases, r.version)) for r in rows],
                total=repo.count_versions(session, model.id),
                aliases=aliases,
                alias_history=history,
                alias_moves=moves,
                token_names=token_repo.names(session, principal.tenant_id, who),
            )

    def list_versions(self, principal: Principal, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first."""
        return list(self.get_model(principal, name).versions)

    def get_version(self, principal: Principal, name: str, ref: VersionRef) -> ModelVersion:
        """One version, by number, alias or the latest."""
        with self.db.session() as session:
            model = self._model(session, principal, name)
            return self._view(session, model, self._version(session, model, ref))

    def resolve(self, principal: Principal, ref: str) -> ResolvedVersion:
        """The version a model reference (``NAME:V``, ``NAME@ALIAS``, ``NAME``) names now."""
        name, version = parse_model_ref(ref)
        with self.db.session() as session:
            model = self._model(session, principal, name)
            row = self._version(session, model, version)
            return ResolvedVersion(row.id, model.name, row.version, dict(row.files))

    def download(self, principal: Principal, name: str, ref: VersionRef, file: str) -> FileDownload:
        """A file of a version, verified against its hash before the first byte is handed
        out (CorruptBlob otherwise), and again as it streams."""
        view = self.get_version(principal, name, ref)
        entry = view.files.get(file)
        if entry is None:
            raise NotFound(f"{name}:{view.version} has no file {file[:80]!r}")
        return verified_download(self.blobs, entry.key, entry.size, file)

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, principal: Principal, name: str, alias: str, version: int) -> AliasChange:
        """Point ``alias`` at ``version`` (moving it if it named another one)."""
        require_role(principal, Role.MEMBER)
        validate_alias(alias)
        with self.db.session(write=True) as session:
            model = self._model(session, principal, name)
            row = self._version(session, model, VersionRef(version=version))
            now = self.clock()
            before = repo.set_alias(session, model.id, alias, row.version, principal.token_id, now)
            return AliasChange(model=name, alias=alias, version=row.version, from_version=before)

    def remove_alias(self, principal: Principal, name: str, alias: str) -> AliasChange:
        """Remove ``alias`` (recorded in the history)."""
        require_role(principal, Role.MEMBER)
        validate_alias(alias)
        with self.db.session(write=True) as session:
            model = self._model(session, principal, name)
            before = repo.remove_alias(session, model.id, alias, principal.token_id, self.clock())
            if before is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            return AliasChange(model=name, alias=alias, version=None, from_version=before)

    # -- delete -------------------------------------------------------------------------

    def delete_version(self, principal: Principal, name: str, ref: VersionRef) -> ModelVersion:
        """Delete a version no deployment serves; its aliases go with it, and so do its
        blobs unless something else (the job, another version) still holds them."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            model = self._model(session, principal, name)
            row = self._version(session, model, ref)
            users = deployment_repo.users_of_version(session, row.id)
            if users:
                raise Conflict(
                    f"{name}:{row.version} is served by deployment(s) {', '.join(users)}: "
                    "delete them or move them to another version first"
                )
            view = self._view(session, model, row)
            repo.remove_aliases_to(session, model.id, row.version, principal.token_id, self.clock())
            orphans = blobrefs.release(session, MODEL_VERSION, row.id)
            repo.delete_version(session, row)
            delete_quietly(self.blobs, orphans)
        return view

    # -- helpers ------------------------------------------------------------------------

    def _model(self, session: Session, principal: Principal, name: str) -> ModelRow:
        return find_model(session, principal, name)

    def _version(self, session: Session, model: ModelRow, ref: VersionRef) -> ModelVersionRow:
        return find_version(session, model, ref)

    def _view(self, session: Session, model: ModelRow, row: ModelVersionRow) -> ModelVersion:
        return version_with_aliases(session, model, row)


def find_model(session: Session, principal: Principal, name: str) -> ModelRow:
    """The principal's tenant's model ``name`` (404 when it has none)."""
    validate_name(name, "model name")
    model = repo.get_model(session, principal.tenant_id, name)
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


def find_version(session: Session, model: ModelRow, ref: VersionRef) -> ModelVersionRow:
    """The version ``ref`` names (a number, an alias, or the latest); 404 when none."""
    number = ref.version
    if ref.alias is not None:
        number = repo.alias_version(session, model.id, ref.alias)
        if number is None:
            raise NotFound(f"model {model.name!r} has no alias {ref.alias!r}")
    row = repo.get_version(session, model.id, number)
    if row is None:
        shown = "(none yet)" if number is None else str(number)
        raise NotFound(f"model {model.name!r} has no version {shown}")
    return row


def version_with_aliases(session: Session, model: ModelRow, row: ModelVersionRow) -> ModelVersion:
    aliases = repo.aliases(session, [model.id])[model.id]
    return version_view(row, model.name, _names_of(aliases, row.version))


def _names_of(aliases: dict[str, int], version: int) -> list[str]:
    return [alias for alias, v in aliases.items() if v == version]
