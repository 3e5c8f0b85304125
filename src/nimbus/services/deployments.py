"""Deployments: registered model versions served by replica processes.

Creating a deployment copies the version's files out of the blob store (verified) into
its model directory, writes the tenant's token file (both in :mod:`.deployment_files`) and
asks the tenant's :class:`~nimbus.serving.fleet.supervisor.Supervisor` (of the
:class:`~.deployment_loop.Fleet`) to start the replicas.

The row of a deployment keeps what a restarted control plane needs to adopt the replicas
that outlived it (port, pids) and its last status. Only the instance recorded as its
``owner`` supervises it; one node is assumed for now. The thread that ticks the
supervisors and calls :meth:`DeploymentService.sync` is :mod:`.deployment_loop`'s.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from nimbus.db import deployments as repo
from nimbus.db.engine import Database
from nimbus.db.tables import DeploymentRow, utcnow
from nimbus.errors import Conflict, NotFound
from nimbus.names import validate_name, version_number
from nimbus.security import Principal, Role, hash_token, require_role
from nimbus.services.deployment_files import ModelDirs, TokenFiles
from nimbus.services.deployment_loop import Fleet, default_supervisor
from nimbus.services.models import ModelService, ResolvedVersion
from nimbus.services.quotas import QuotaService
from nimbus.serving.fleet.deployment import DeploymentSpec, DeploymentState
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.storage.blobs import BlobStore
from nimbus.wire.deployments import CreateDeployment, Deployment, Replica, UpdateDeployment

log = logging.getLogger(__name__)
# What a PATCH may change besides the model: each a column and a field of both bodies.
SETTINGS = (
    "replicas",
    "max_batch_size",
    "max_delay_ms",
    "runtime",
    "public",
    "max_batch_rows",
    "max_tensor_elements",
)


def url_host(host: str) -> str:
    """How clients on this machine reach what listens on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


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
        quotas: QuotaService | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.models = models
        self.root = Path(root)
        self.host = host
        self.clock = clock
        self.quotas = quotas
        self.owner = "local"  # this instance's id: set by DeploymentLoop
        self.fleet = Fleet(self.root, make_supervisor)
        self.model_dirs = ModelDirs(self.root, blobs)
        # The control plane's own key to its replicas (the console's Try it and metrics):
        # made afresh by each instance, only its hash written, beside the tenant's tokens'.
        self.replica_key = secrets.token_urlsafe(32)
        self.token_files = TokenFiles(
            db, self.root, clock, extra=frozenset({hash_token(self.replica_key)})
        )
        self._lock = threading.RLock()
        self._tenant_ids: dict[str, int] = {}
        self._persisted: dict[tuple[str, str], dict[str, Any]] = {}

    # -- the API ------------------------------------------------------------------------

    def create(self, principal: Principal, body: CreateDeployment) -> Deployment:
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
                    if self.quotas is not None:
                        self.quotas.check_deployments(
                            session,
                            principal.tenant_id,
                            principal.tenant,
                            deployments=1,
                            replicas=body.replicas,
                        )
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
                        max_batch_rows=body.max_batch_rows,
                        max_tensor_elements=body.max_tensor_elements,
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

    def list_deployments(self, principal: Principal) -> list[Deployment]:
        """Every deployment of the caller's tenant."""
        with self.db.session() as session:
            rows = repo.list_for_tenant(session, principal.tenant_id)
            versions = repo.model_version_of(session, rows)
            return [self._view(principal.tenant, row, versions) for row in rows]

    def get(self, principal: Principal, name: str) -> Deployment:
        """One deployment: its live status where this instance supervises it."""
        with self.db.session() as session:
            row = self._row(session, principal, name)
            return self._view(principal.tenant, row, repo.model_version_of(session, [row]))

    def update(self, principal: Principal, name: str, body: UpdateDeployment) -> Deployment:
        """Move the deployment to another model version and/or settings: replicas are
        replaced one at a time (a rolling update), or just added or drained for a scale."""
        require_role(principal, Role.MEMBER)
        with self._lock:
            with self.db.session() as session:
                row = self._row(session, principal, name)
                self._check_owner(row)
                current = repo.model_version_of(session, [row])[row.model_version_id]
                if self.quotas is not None and body.replicas is not None:
                    self.quotas.check_deployments(
                        session,
                        principal.tenant_id,
                        principal.tenant,
                        deployments=0,
                        replicas=body.replicas - row.replicas,
                    )
            if body.model is not None:
                target = self.models.resolve(principal, body.model)
                if target.id != row.model_version_id:  # what a rollback goes back to
                    version, model = current
                    row.previous_model_ref = f"{model.name}:{version.version}"
                row.model_version_id, row.model_ref = target.id, body.model
            else:
                version, model = current
                target = ResolvedVersion(version.id, model.name, version.version, version.files)
            for field in SETTINGS:
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
                    for field in ("model_version_id", "model_ref", "previous_model_ref", *SETTINGS):
                        setattr(stored, field, getattr(row, field))
                    stored.updated_at = self.clock()
            except IntegrityError:
                raise Conflict(f"model version {body.model!r} was deleted meanwhile") from None
            self._persist(principal.tenant, name, row.id)
        return self.get(principal, name)

    def rollback(self, principal: Principal, name: str) -> Deployment:
        """Go back to the version served before the last model change (a rolling update to
        it); rolling back twice returns to where it was. 409 if the model never changed."""
        require_role(principal, Role.MEMBER)
        with self._lock:  # re-entered by update: no other change comes in between
            with self.db.session() as session:
                previous = self._row(session, principal, name).previous_model_ref
            if previous is None:
                raise Conflict(f"deployment {name!r} has no previous version to roll back to")
            body = UpdateDeployment.model_validate({"model": previous})
            return self.update(principal, name, body)

    def delete(self, principal: Principal, name: str) -> Deployment:
        """Drain and stop the replicas, free the port, forget the deployment."""
        require_role(principal, Role.MEMBER)
        with self._lock:
            with self.db.session() as session:
                row = self._row(session, principal, name)
                self._check_owner(row)
                view = self._view(principal.tenant, row, repo.model_version_of(session, [row]))
            self._forget(principal.tenant, name, row.id)
        return view.model_copy(update={"state": DeploymentState.STOPPED.value, "replicas": []})

    # -- supervision (DeploymentLoop) ---------------------------------------------------

    def recover(self) -> None:
        """At start: take back the deployments this instance owns: adopt their surviving
        replicas on their persisted port, start the missing ones."""
        self._recover(None)

    def take_over(self, dead_owner: str) -> list[str]:
        """Adopt the deployments of control plane ``dead_owner`` (dead, on this machine):
        they become this instance's, their surviving replicas adopted on their persisted
        ports (and rolled onto this instance's files), the missing ones started. Returns
        their names; none if another control plane took them first."""
        with self.db.session(write=True) as session:
            ids = repo.reassign(session, dead_owner, self.owner)
        if ids:
            log.info("took over %d deployment(s) of control plane %s", len(ids), dead_owner)
        return self._recover(set(ids)) if ids else []

    def _recover(self, only: set[int] | None) -> list[str]:
        with self.db.session() as session:
            owned = [
                (row, tenant)
                for row, tenant in repo.owned_by(session, self.owner)
                if only is None or row.id in only
            ]
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
        return [row.name for row, _ in owned]

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
                    self.model_dirs.prune(tenant, name, status)

    def refresh_tokens(self, *, force: bool = False, only: str | None = None) -> None:
        """Rewrite each supervised tenant's token file whose content changed (``only``: that
        tenant's): a revoked or expired token stops working within about a second, a new
        one starts working."""
        known = dict(self._tenant_ids)  # a copy: requests add tenants meanwhile
        self.token_files.refresh({t: i for t, i in known.items() if only in (None, t)}, force=force)

    def stop_replicas(self) -> None:
        """At a shutdown that does not keep deployments: drain and stop every replica this
        instance supervises (the deployments in parallel) and record each deployment as
        running none. The deployments stay: the next start starts their replicas again, on
        the same ports."""
        with self._lock:
            running = [(t, sup, name) for t, sup in self.fleet.items() for name in sup.names()]

            def stop(item: tuple[str, Supervisor, str]) -> tuple[str, str, dict[str, Any]]:
                tenant, sup, name = item
                status = sup.status(name).to_dict()
                sup.stop(name)
                none = {"state": DeploymentState.PENDING.value, "replicas": []}
                return tenant, name, {**status, **none}

            with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
                stopped = list(pool.map(stop, running))
            for tenant, name, status in stopped:
                with self.db.session(write=True) as session:
                    row = repo.get(session, self._tenant_ids[tenant], name)
                    if row is not None:
                        repo.save_status(session, row.id, status, self.clock())
                self._persisted.pop((tenant, name), None)
                log.info("deployment %s/%s: replicas stopped with the control plane", tenant, name)

    # -- helpers ------------------------------------------------------------------------

    def _spec(
        self, tenant: str, row: DeploymentRow, target: ResolvedVersion, port: int = 0
    ) -> DeploymentSpec:
        model_dir = self.model_dirs.materialize(tenant, row.name, target)
        return DeploymentSpec(
            name=row.name,
            model_dir=model_dir,
            version=str(target.version),
            replicas=row.replicas,
            max_batch_size=row.max_batch_size,
            max_delay_ms=row.max_delay_ms,
            runtime=row.runtime,
            public=row.public,
            max_batch_rows=row.max_batch_rows,
            max_tensor_elements=row.max_tensor_elements,
            host=self.host,
            port=port,
            token_file=self.token_files.path(tenant),
        )

    def _forget(self, tenant: str, name: str, row_id: int) -> None:
        """Stop the replicas (if any run here), delete the row and the files."""
        sup = self.fleet.running(tenant, name)
        if sup is not None:
            sup.stop(name)
        with self.db.session(write=True) as session:
            repo.delete_row(session, row_id)
        self._persisted.pop((tenant, name), None)
        self.model_dirs.forget(tenant, name)

    def _persist(self, tenant: str, name: str, row_id: int) -> None:
        sup = self.fleet.running(tenant, name)
        if sup is None:
            return
        status = sup.status(name).to_dict()
        with self.db.session(write=True) as session:
            repo.save_status(session, row_id, status, self.clock())
        self._persisted[(tenant, name)] = status

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
    ) -> Deployment:
        version, model = versions[row.model_version_id]
        sup = self.fleet.running(tenant, row.name)
        # Supervised here: the live status; otherwise the last one persisted (and the row's
        # state, which a failed recovery or another instance set).
        status = sup.status(row.name).to_dict() if sup is not None else (row.status or {})
        state = status["state"] if sup is not None else row.state
        port = status.get("port") or row.port
        return Deployment(
            name=row.name,
            model=model.name,
            model_version=version.version,
            model_ref=row.model_ref,
            previous_model_ref=row.previous_model_ref,
            state=state,
            replicas=[
                Replica(
                    index=r["index"],
                    pid=r["pid"],
                    port=r["port"],
                    state=r["state"],
                    restarts=r["restarts"],
                    model_version=_number(r["model_version"]),
                )
                for r in status.get("replicas", [])
            ],
            desired_replicas=row.replicas,
            endpoint=f"http://{url_host(self.host)}:{port}" if port else None,
            max_batch_size=row.max_batch_size,
            max_delay_ms=row.max_delay_ms,
            runtime=row.runtime,
            public=row.public,
            max_batch_rows=row.max_batch_rows,
            max_tensor_elements=row.max_tensor_elements,
            owner=row.owner,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def _number(version: str) -> int | str:
    number = version_number(version)
    return version if number is None else number
