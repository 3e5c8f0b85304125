"""The registry service and the deployment repository on SQLite and PostgreSQL, over an
in-memory blob store (no local files: registration copies blobs out to check them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nimbus.db import deployments as deployment_repo
from nimbus.db import registry as models_repo
from nimbus.db import tenants, tokens
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.errors import Conflict, NotFound
from nimbus.security import Principal, Role, hash_token
from nimbus.services.models import ModelService, VersionRef
from nimbus.storage.blobs import BlobStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.wire.models import ModelVersion
from tests.helpers_models import add_job, image_model_dir


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("service-models")
    return image_model_dir(root / "v1", 1), image_model_dir(root / "v2", 2)


@pytest.fixture
def store(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    yield database
    database.dispose()


def principal(db: Database, tenant: str = "acme") -> Principal:
    with db.session(write=True) as session:
        tenant_id = tenants.get_or_create(session, tenant).id
    return Principal(tenant_id, tenant, "tok_test", "test", Role.MEMBER)


def add_deployment(db: Database, who: Principal, name: str, version_id: int, **kw: object) -> int:
    now = utcnow()
    fields = dict(
        tenant_id=who.tenant_id,
        name=name,
        model_version_id=version_id,
        model_ref="m:1",
        replicas=1,
        max_batch_size=8,
        max_delay_ms=1.0,
        runtime="onnx",
        public=False,
        state="ready",
        port=None,
        pids=[],
        status=None,
        owner="node-a",
        created_at=now,
        updated_at=now,
        created_by=None,
    )
    fields.update(kw)
    with db.session(write=True) as session:
        return deployment_repo.create(session, **fields).id


def test_register_alias_and_delete(
    store: Database, model_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    memory = MemoryObjectStore()
    blobs = BlobStore(memory, tmp_path / "staging")
    service = ModelService(store, blobs, tmp_dir=tmp_path / "tmp")
    who = principal(store)
    jobs = [add_job(store, blobs, "acme", d) for d in model_dirs]
    first = service.register(who, "m", jobs[0])
    assert first.created and first.version.version == 1
    assert isinstance(first.version, ModelVersion) and first.version.job == jobs[0]
    assert not service.register(who, "m", jobs[0]).created
    assert service.register(who, "m", jobs[1]).version.version == 2
    newest, older = (service.version_page(who, "m", offset, 1) for offset in (0, 1))
    assert [v.version for v in newest.versions] == [2] and newest.total == 2  # newest first
    assert [v.version for v in older.versions] == [1] and older.total == 2
    assert service.list_models(who)[0].updated_at == newest.versions[0].created_at
    assert service.set_alias(who, "m", "prod", 1).from_version is None
    assert service.set_alias(who, "m", "prod", 2).from_version == 1
    latest = service.version_page(who, "m", 0, 1)  # the latest move of the two, newest first
    assert [(e.version, e.from_version) for e in latest.alias_history] == [(2, 1)]
    assert latest.alias_moves == 2
    assert service.get_version(who, "m", VersionRef(alias="prod")).version == 2
    assert service.list_models(who)[0].aliases == {"prod": 2}
    assert service.resolve(who, "m@prod").version == 2
    with pytest.raises(NotFound):
        service.get_model(principal(store, "other"), "m")

    target = service.resolve(who, "m:2")
    deployment_id = add_deployment(store, who, "web", target.id)
    with pytest.raises(Conflict, match="web"):
        service.delete_version(who, "m", VersionRef(version=2))
    with store.session(write=True) as session:
        deployment_repo.delete_row(session, deployment_id)
    keys = [e.key for e in service.delete_version(who, "m", VersionRef(version=2)).files.values()]
    assert all(memory.exists(k) for k in keys)  # the job still holds them
    model = service.get_model(who, "m")
    assert model.aliases == {} and [v.version for v in model.versions] == [1]
    assert [(e.alias, e.version) for e in model.alias_history] == [
        ("prod", 1),
        ("prod", 2),
        ("prod", None),
    ]


def test_deployment_repository(store: Database) -> None:
    who, other = principal(store), principal(store, "other")
    now = utcnow()
    with store.session(write=True) as session:
        for name, tenant_id, revoked, expires in (
            ("live", who.tenant_id, None, None),
            ("later", who.tenant_id, None, now + timedelta(hours=1)),
            ("revoked", who.tenant_id, now, None),
            ("expired", who.tenant_id, None, now - timedelta(seconds=1)),
            ("elsewhere", other.tenant_id, None, None),
        ):
            row = tokens.create(
                session,
                token_id=f"tok_{name}",
                tenant_id=tenant_id,
                name=name,
                role="viewer",
                token_hash=hash_token(name),
                created_by=None,
                expires_at=expires,
            )
            row.revoked_at = revoked
    with store.session() as session:
        hashes = deployment_repo.live_token_hashes(session, [who.tenant_id], now)
    assert hashes == {who.tenant_id: {hash_token("live"), hash_token("later")}}

    with store.session(write=True) as session:
        model = models_repo.get_or_create_model(session, who.tenant_id, "m", now)
        version = models_repo.create_version(
            session,
            model_id=model.id,
            version=models_repo.allocate_version_number(session, model),
            job_id="job_x",
            dataset={},
            code_hash=None,
            params={},
            seed=None,
            metrics=None,
            spec={},
            files={},
            created_at=now,
            created_by=None,
        ).id
    serving = add_deployment(store, who, "a", version)
    add_deployment(store, who, "b", version, state="stopped")
    add_deployment(store, other, "a", version, owner="node-b")
    status = {"state": "ready", "port": 8123, "replicas": [{"pid": 11}, {"pid": None}]}
    with store.session(write=True) as session:
        deployment_repo.save_status(session, serving, status, now)
    with store.session() as session:
        owned = deployment_repo.owned_by(session, "node-a")
        assert [(row.name, tenant) for row, tenant in owned] == [("a", "acme")]
        assert (owned[0][0].port, owned[0][0].pids, owned[0][0].state) == (8123, [11], "ready")
        assert deployment_repo.users_of_version(session, version) == ["a", "a", "b"]
        found = deployment_repo.model_version_of(session, [owned[0][0]])
        assert found[version][1].name == "m"
