"""Deployments: registered model versions served by replica processes.

Creating a deployment copies the version's files out of the blob store (verified) into
``NIMBUS_HOME/deployments/<tenant>/<name>/models/<model>-<version>/``, writes the tenant's
token file (SHA-256 hashes of its usable tokens, any role: 0600, replaced atomically, kept
fresh by :class:`DeploymentLoop`) and asks the tenant's
:class:`~nimbus.serving.fleet.supervisor.Supervisor` to start the replicas. Each tenant has its
own supervisor because deployment names are unique per tenant only (and the name is the
model name clients use on the endpoint).

The row of a deployment keeps what a restarted control plane needs to adopt the replicas
that outlived it (port, pids) and its last status. Only the instance recorded as its
``owner`` supervises it; one node is assumed for now.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from nimbus.db import deployments as repo
from nimbus.db.engine import Database
from nimbus.db.tables import DeploymentRow, utcnow
from nimbus.errors import Conflict, NotFound
from nimbus.modelformat.files import MODEL_FILES
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.models import ModelService, ResolvedVersion
from nimbus.services.views import iso
from nimbus.serving.fleet.deployment import DeploymentSpec, DeploymentState
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.storage.blobs import BlobStore, digest_of

log = logging.getLogger(__name__)

MAX_REPLICAS = 32
TOKEN_FILE = ".tokens"  # per tenant; names never start with a dot, so no deployment clashes


class CreateDeployment(BaseModel):
    """The body of ``POST /api/v1/deployments``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    model: str = Field(min_length=1, max_length=160)
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_delay_ms: float = Field(2.0, ge=0, le=1000, allow_inf_nan=False)
    runtime: Literal["onnx", "torch"] = "onnx"
    public: bool = False


class UpdateDeployment(BaseModel):
    """The body of ``PATCH /api/v1/deployments/{name}``: what changes."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=160)
    replicas: int | None = Field(None, ge=1, le=MAX_REPLICAS)
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    max_delay_ms: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    runtime: Literal["onnx", "torch"] | None = None
    public: bool | None = None


def url_host(host: str) -> str:
    """How clients on this machine reach what listens on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600, atomically (a reader sees the old or the new file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _intact(directory: Path, files: dict[str, Any]) -> bool:
    """Every model file is there with the size and hash the registry holds."""
    for name in MODEL_FILES:
        path, entry = directory / name, files[name]
        try:
            if path.stat().st_size != int(entry["size"]):
                return False
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != digest_of(entry["key"]):
                    return False
        except OSError:
            return False
    return True


class Fleet:
    """One supervisor per tenant, made on first use, all ticked by :class:`DeploymentLoop`."""

    def __init__(self, root: Path, make: Callable[[Path], Supervisor]) -> None:
        self.root = root
        self._make = make
        self._supervisors: dict[str, Supervisor] = {}
        self._lock = threading.Lock()

    def of(self, tenant: str) -> Supervisor:
        with self._lock:
            if tenant not in self._supervisors:
                self._supervisors[tenant] = self._make(self.root / tenant)
            return self._supervisors[tenant]

    def running(self, tenant: str, name: str) -> Supervisor | None:
        """The supervisor running deployment ``name`` of ``tenant``, if this one is."""
        with self._lock:
            sup = self._supervisors.get(tenant)
        return sup if sup is not None and name in sup.names() else None

    def items(self) -> list[tuple[str, Supervisor]]:
        with self._lock:
            return sorted(self._supervisors.items(), key=lambda item: item[0])

    def tick(self) -> None:
        for _, sup in self.items():
            sup.tick()

    def detach(self) -> None:
        """Leave every replica serving (a control-plane shutdown)."""
        for _, sup in self.items():
            sup.detach()


def default_supervisor(log_dir: Path) -> Supervisor:
    return Supervisor(log_dir=log_dir)


class DeploymentService:
    """Deployments of every tenant; the API methods act for one principal, within its
    tenant. Create, update and delete are serialised (one lock)."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        models: ModelService,
        *,
        root: Path,
        host: str = "127.0.0.1",
        make_supervisor: Callable[[Path], Supervisor] = default_supervisor,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.models = models
        self.root = Path(root)
        self.host = host
        self.clock = clock
        self.owner = "local"  # this instance's id: set by DeploymentLoop
        self.fleet = Fleet(self.root, make_supervisor)
        self._lock = threading.RLock()
        self._tokens_lock = threading.Lock()
        self._tenant_ids: dict[str, int] = {}
        self._token_text: dict[str, str] = {}
        self._persisted: dict[tuple[str, str], dict[str, Any]] = {}
        self._current_dir: dict[tuple[str, str], Path] = {}

    # -- the API ------------------------------------------------------------------------

    def create(self, principal: Principal, body: CreateDeployment) -> dict[str, Any]:
        """Record the deployment, materialise its model and start its replicas; the answer
        is ``pending`` until they are ready."""
        require_role(principal, Role.MEMBER)
        name = validate_name(body.name, "deployment name")
        target = self.models.resolve(principal, body.model)
        with self._lock:
            now = self.clock()
            try:
                with self.db.session(write=True) as session:
                    if repo.get(session, principal.tenant_id, name) is not None:
                        raise Conflict(f"deployment {name!r} already exists")
                    row = repo.create(
                        session,
                        tenant_id=principal.tenant_id,
                        name=name,
                        model_version_id=target.id,
                        model_ref=body.model,
                        replicas=body.replicas,
                        max_batch_size=body.max_batch_size,
                        max_delay_ms=body.max_delay_ms,
                        runtime=body.runtime,
                        public=body.public,
                        state=DeploymentState.PENDING.value,
                        port=None,
                        pids=[],
                        status=None,
                        owner=self.owner,
                        created_at=now,
                        updated_at=now,
                        created_by=principal.token_id,
                    )
                    row_id = row.id
            except IntegrityError:
                raise Conflict(f"deployment {name!r} exists or its model changed") from None
            self._tenant_ids[principal.tenant] = principal.tenant_id
            try:
                spec = self._spec(principal.tenant, row, target)
                self.refresh_tokens(force=True, only=principal.tenant)
                self.fleet.of(principal.tenant).start(spec)
            except BaseException:
                self._forget(principal.tenant, name, row_id)
                raise
            self._persist(principal.tenant, name, row_id)
        return self.get(principal, name)

    def list_deployments(self, principal: Principal) -> list[dict[str, Any]]:
        with self.db.session() as session:
            rows = repo.list_for_tenant(session, principal.tenant_id)
            versions = repo.model_version_of(session, rows)
            return [self._view(principal.tenant, row, versions) for row in rows]

    def get(self, principal: Principal, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            row = self._row(session, principal, name)
            return self._view(principal.tenant, row, repo.model_version_of(session, [row]))

    def update(self, principal: Principal, name: str, body: UpdateDeployment) -> dict[str, Any]:
        """Move the deployment to another model version and/or settings: replicas are
        replaced one at a time (a rolling update), or just added or drained for a scale."""
        require_role(principal, Role.MEMBER)
        with self._lock:
            with self.db.session() as session:
                row = self._row(session, principal, name)
                self._check_owner(row)
                current = repo.model_version_of(session, [row])[row.model_version_id]
            if body.model is not None:
                target = self.models.resolve(principal, body.model)
                row.model_version_id, row.model_ref = target.id, body.model
            else:
                version, model = current
                target = ResolvedVersion(version.id, model.name, version.version, version.files)
            for field in ("replicas", "max_batch_size", "max_delay_ms", "runtime", "public"):
                value = getattr(body, field)
                if value is not None:
                    setattr(row, field, value)
            spec = self._spec(principal.tenant, row, target, port=row.port or 0)
            sup = self.fleet.running(principal.tenant, name)
            if sup is not None:
                sup.update(name, spec)
            else:  # not supervised (its recovery failed): start it afresh
                self.refresh_tokens(force=True, only=principal.tenant)
                self.fleet.of(principal.tenant).start(spec)
            try:
                with self.db.session(write=True) as session:
                    stored = self._row(session, principal, name)
                    for field in (
                        "model_version_id",
                        "model_ref",
                        "replicas",
                        "max_batch_size",
                        "max_delay_ms",
                        "runtime",
                        "public",
                    ):
                        setattr(stored, field, getattr(row, field))
                    stored.updated_at = self.clock()
            except IntegrityError:
                raise Conflict(f"model version {body.model!r} was deleted meanwhile") from None
            self._persist(principal.tenant, name, row.id)
        return self.get(principal, name)

    def delete(self, principal: Principal, name: str) -> dict[str, Any]:
        """Drain and stop the replicas, free the port, forget the deployment."""
        require_role(principal, Role.MEMBER)
        with self._lock:
            with self.db.session() as session:
                row = self._row(session, principal, name)
                self._check_owner(row)
                view = self._view(principal.tenant, row, repo.model_version_of(session, [row]))
            self._forget(principal.tenant, name, row.id)
        return {**view, "state": DeploymentState.STOPPED.value, "replicas": []}

    # -- supervision (DeploymentLoop) ---------------------------------------------------

    def recover(self) -> None:
        """At start: take back the deployments this instance owns: adopt their surviving
        replicas on their persisted port, start the missing ones."""
        with self.db.session() as session:
            owned = repo.owned_by(session, self.owner)
            versions = repo.model_version_of(session, [row for row, _ in owned])
        for row, tenant in owned:
            try:
                version, model = versions[row.model_version_id]
                target = ResolvedVersion(version.id, model.name, version.version, version.files)
                self._tenant_ids[tenant] = row.tenant_id
                spec = self._spec(tenant, row, target, port=row.port or 0)
                self.refresh_tokens(force=True, only=tenant)
                sup = self.fleet.of(tenant)
                if row.port:
                    sup.adopt(row.name, spec, [int(p) for p in row.pids])
                else:
                    sup.start(spec)
                self._persist(tenant, row.name, row.id)
                log.info("deployment %s/%s recovered on port %s", tenant, row.name, spec.port)
            except Exception:
                log.exception("could not recover deployment %s/%s", tenant, row.name)
                with self.db.session(write=True) as session:
                    repo.set_state(session, row.id, DeploymentState.FAILED.value, self.clock())

    def sync(self) -> None:
        """Persist the status of every supervised deployment that changed; drop the model
        directories of versions no replica runs any more."""
        for tenant, sup in self.fleet.items():
            for name in sup.names():
                try:
                    status = sup.status(name).to_dict()
                except NotFound:
                    continue  # deleted meanwhile
                key = (tenant, name)
                if self._persisted.get(key) != status:
                    with self.db.session(write=True) as session:
                        row = repo.get(session, self._tenant_ids[tenant], name)
                        if row is not None:
                            repo.save_status(session, row.id, status, self.clock())
                    self._persisted[key] = status
                    self._prune(key, status)

    def refresh_tokens(self, *, force: bool = False, only: str | None = None) -> None:
        """Rewrite each supervised tenant's token file whose content changed: a revoked or
        expired token stops working within about a second, a new one starts working."""
        with self._tokens_lock:
            known = dict(self._tenant_ids)  # a copy: requests add tenants meanwhile
            tenants = {t: i for t, i in known.items() if only in (None, t)}
            with self.db.session() as session:
                hashes = repo.live_token_hashes(session, tenants.values(), self.clock())
            for tenant, tenant_id in tenants.items():
                text = "".join(f"{h}\n" for h in sorted(hashes[tenant_id]))
                if force or self._token_text.get(tenant) != text:
                    (self.root / tenant).mkdir(mode=0o700, parents=True, exist_ok=True)
                    write_private(self._token_file(tenant), text)
                    self._token_text[tenant] = text

    # -- helpers ------------------------------------------------------------------------

    def _spec(
        self, tenant: str, row: DeploymentRow, target: ResolvedVersion, port: int = 0
    ) -> DeploymentSpec:
        model_dir = self._materialize(tenant, row.name, target)
        self._current_dir[(tenant, row.name)] = model_dir
        return DeploymentSpec(
            name=row.name,
            model_dir=model_dir,
            version=str(target.version),
            replicas=row.replicas,
            max_batch_size=row.max_batch_size,
            max_delay_ms=row.max_delay_ms,
            runtime=row.runtime,
            public=row.public,
            host=self.host,
            port=port,
            token_file=self._token_file(tenant),
        )

    def _materialize(self, tenant: str, name: str, target: ResolvedVersion) -> Path:
        """The version's model directory, copied out of the blob store (each blob verified
        as it streams) unless an intact copy is already there."""
        directory = self.root / tenant / name / "models" / f"{target.model}-{target.version}"
        if directory.is_dir() and _intact(directory, target.files):
            return directory
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".copy-", dir=directory.parent))
        try:
            for file in MODEL_FILES:
                with open(work / file, "wb") as out:
                    for chunk in self.blobs.iter_verified(target.files[file]["key"]):
                        out.write(chunk)
            shutil.rmtree(directory, ignore_errors=True)
            os.rename(work, directory)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return directory

    def _prune(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        """Once every replica runs the current version, older model directories go."""
        current = self._current_dir.get(key)
        replicas = status["replicas"]
        if (
            current is None
            or status["state"] != DeploymentState.READY.value
            or any(
                r["state"] != "ready" or r["model_version"] != status["model_version"]
                for r in replicas
            )
        ):
            return
        for stale in current.parent.iterdir():
            if stale != current and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)

    def _forget(self, tenant: str, name: str, row_id: int) -> None:
        """Stop the replicas (if any run here), delete the row and the files."""
        sup = self.fleet.running(tenant, name)
        if sup is not None:
            sup.stop(name)
        with self.db.session(write=True) as session:
            repo.delete_row(session, row_id)
        self._persisted.pop((tenant, name), None)
        self._current_dir.pop((tenant, name), None)
        shutil.rmtree(self.root / tenant / name, ignore_errors=True)

    def _persist(self, tenant: str, name: str, row_id: int) -> None:
        sup = self.fleet.running(tenant, name)
        if sup is None:
            return
        status = sup.status(name).to_dict()
        with self.db.session(write=True) as session:
            repo.save_status(session, row_id, status, self.clock())
        self._persisted[(tenant, name)] = status

    def _token_file(self, tenant: str) -> Path:
        return self.root / tenant / TOKEN_FILE

    def _check_owner(self, row: DeploymentRow) -> None:
        if row.owner not in (None, self.owner):
            raise Conflict(
                f"deployment {row.name!r} is supervised by instance {row.owner!r}, not this one"
            )

    def _row(self, session: Any, principal: Principal, name: str) -> DeploymentRow:
        validate_name(name, "deployment name")
        row = repo.get(session, principal.tenant_id, name)
        if row is None:
            raise NotFound(f"deployment {name!r} not found")
        return row

    def _view(
        self, tenant: str, row: DeploymentRow, versions: dict[int, tuple[Any, Any]]
    ) -> dict[str, Any]:
        version, model = versions[row.model_version_id]
        sup = self.fleet.running(tenant, row.name)
        # Supervised here: the live status; otherwise the last one persisted (and the row's
        # state, which a failed recovery or another instance set).
        status = sup.status(row.name).to_dict() if sup is not None else (row.status or {})
        state = status["state"] if sup is not None else row.state
        port = status.get("port") or row.port
        return {
            "name": row.name,
            "model": model.name,
            "model_version": version.version,
            "model_ref": row.model_ref,
            "state": state,
            "replicas": [
                {
                    "index": r["index"],
                    "pid": r["pid"],
                    "port": r["port"],
                    "state": r["state"],
                    "restarts": r["restarts"],
                    "model_version": _number(r["model_version"]),
                }
                for r in status.get("replicas", [])
            ],
            "desired_replicas": row.replicas,
            "endpoint": f"http://{url_host(self.host)}:{port}" if port else None,
            "max_batch_size": row.max_batch_size,
            "max_delay_ms": row.max_delay_ms,
            "runtime": row.runtime,
            "public": row.public,
            "owner": row.owner,
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
        }


def _number(version: str) -> int | str:
    return int(version) if version.isdigit() else version


class DeploymentLoop:
    """The control plane's supervision of deployments (a ``Background`` of the app).

    ``start`` recovers the deployments ``owner`` owns, then a thread ticks every tenant's
    supervisor every ``interval`` seconds and, every ``sync_every`` seconds, refreshes the
    token files and persists statuses. ``stop`` persists once more and detaches: the
    replicas keep serving through a control-plane restart.
    """

    def __init__(
        self,
        service: DeploymentService,
        owner: str,
        interval: float = 0.5,
        sync_every: float = 1.0,
    ) -> None:
        self.service = service
        self.owner = owner
        self.interval = interval
        self.sync_every = sync_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.service.owner = self.owner
        self.service.recover()
        self._thread = threading.Thread(target=self._run, name="deployments", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        synced = 0.0
        while not self._stop.wait(self.interval):
            try:
                self.service.fleet.tick()
                if time.monotonic() - synced >= self.sync_every:
                    self.service.refresh_tokens()
                    self.service.sync()
                    synced = time.monotonic()
            except Exception:
                log.exception("deployment supervision round failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.service.sync()
        except Exception:
            log.exception("could not persist deployment statuses at shutdown")
        self.service.fleet.detach()
