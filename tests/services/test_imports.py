"""ModelImports over both metadata stores, with the real check child: an imported version
(no job, lineage imported, its files and the check's spec), the same import answered by the
same version without a second check, its card, and migration 0018 down and up (with an
imported version stored in each metadata store)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import inspect, text

from nimbus.datasets.domain import Task
from nimbus.db import registry as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import alembic_config, upgrade
from nimbus.errors import Forbidden, InvalidInput
from nimbus.modelformat.files import MODEL_FILES, ONNX_FILE
from nimbus.modelformat.import_options import ImportOptions
from nimbus.security import Principal, Role
from nimbus.services.card_markdown import card_markdown
from nimbus.services.cards import CardService
from nimbus.services.imports import ModelImports
from nimbus.services.models import VersionRef
from nimbus.services.tokens import TokenService
from nimbus.storage.blobs import BlobStore, digest_of
from nimbus.storage.memory import MemoryObjectStore
from tests.modelformat.test_imported import graph_bytes

OPTIONS = ImportOptions(task=Task.IMAGE, classes=("a", "b", "c"), scale=1 / 255)


@pytest.fixture
def store(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    yield database
    database.dispose()


def principals(db: Database) -> tuple[Principal, Principal]:
    """A member and a viewer of one tenant."""
    tokens = TokenService(db)
    operator = tokens.authenticate(tokens.ensure_bootstrap_admin() or "")
    made = [tokens.create(operator, f"t-{r}", r, "acme") for r in (Role.MEMBER, Role.VIEWER)]
    member, viewer = (tokens.authenticate(m.token) for m in made)
    return member, viewer


def staged(tmp_path: Path, data: bytes) -> tuple[Path, str, int]:
    path = tmp_path / f"upload-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def test_an_import_is_a_version_without_a_job(db: Database, tmp_path: Path) -> None:
    store = db
    blobs = BlobStore(MemoryObjectStore(), tmp_path / "staging")
    imports = ModelImports(store, blobs)
    who, viewer = principals(store)
    data = graph_bytes()
    path, sha, size = staged(tmp_path, data)
    result = imports.import_model(who, "hand", path, sha, size, "hand.onnx", OPTIONS)
    version = result.version
    assert result.created and not path.exists()  # the upload is moved into the store
    assert (version.version, version.job, version.lineage) == (1, None, "imported")
    assert version.dataset.name is None and version.metrics is None and version.params == {}
    assert set(version.files) == set(MODEL_FILES)
    assert digest_of(version.files[ONNX_FILE].key) == sha  # byte for byte as uploaded
    assert blobs.read_bytes(version.files[ONNX_FILE].key) == data
    assert version.spec["imported"]["file"] == {"name": "hand.onnx", "sha256": sha, "size": size}
    assert version.spec["preprocessing"]["scale"] == 1 / 255

    path, sha, size = staged(tmp_path, data)
    again = imports.import_model(who, "hand", path, sha, size, "hand.onnx", OPTIONS)
    assert not again.created and again.version.version == 1

    with pytest.raises(Forbidden):
        imports.import_model(viewer, "hand", *staged(tmp_path, data), "hand.onnx", OPTIONS)
    other = ImportOptions(task=Task.IMAGE, classes=("x", "y", "z"))
    assert imports.import_model(who, "hand", path, sha, size, "hand.onnx", other).created

    card = CardService(store).model_card(who, "hand", VersionRef(version=1))
    assert card.model_details.lineage == "imported" and card.model_details.job is None
    assert card.evaluation.available is False and card.imported is not None
    assert card.imported.sha256 == sha and card.imported.opsets == {"ai.onnx": 17}
    text = card_markdown(card)
    assert "## Import" in text and "No evaluation exists" in text and "Trained by job" not in text

    with store.session() as session:
        model = repo.get_model(session, who.tenant_id, "hand")
        assert model is not None and repo.count_versions(session, model.id) == 2


def test_migration_0018_goes_down_and_up(store: Database, tmp_path: Path) -> None:
    imports = ModelImports(store, BlobStore(MemoryObjectStore(), tmp_path / "staging"))
    who, _ = principals(store)
    made = imports.import_model(who, "hand", *staged(tmp_path, graph_bytes()), "h.onnx", OPTIONS)
    with store.session(write=True) as session:
        model = repo.get_model(session, who.tenant_id, "hand")
        assert model is not None
        repo.set_alias(session, model.id, "prod", 1, who.token_id, made.version.created_at)
    config = alembic_config(store.engine)
    command.downgrade(config, "0017")  # imported versions cannot be kept without a job
    column = next(
        c for c in inspect(store.engine).get_columns("model_versions") if c["name"] == "job_id"
    )
    assert column["nullable"] is False
    with store.engine.connect() as connection:
        for table in ("model_versions", "model_aliases", "blob_refs"):
            assert connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0
    upgrade(store.engine)
    column = next(
        c for c in inspect(store.engine).get_columns("model_versions") if c["name"] == "job_id"
    )
    assert column["nullable"] is True


def memory_bomb() -> bytes:
    """A valid graph that asks for 40 GB at run time (a [100000, 100000] ConstantOfShape)."""
    shape = numpy_helper.from_array(np.array([100_000, 100_000], np.int64), "big_shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=one),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["flat", "total"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_a_graph_that_asks_for_too_much_memory_is_refused(db: Database, tmp_path: Path) -> None:
    """The run happens in the check child, under its memory limit: the allocation fails
    there, the control plane answers 400, and nothing is stored."""
    memory = MemoryObjectStore()
    imports = ModelImports(db, BlobStore(memory, tmp_path / "staging"))
    who, _ = principals(db)
    with pytest.raises(InvalidInput, match="Failed to allocate memory"):
        imports.import_model(who, "bomb", *staged(tmp_path, memory_bomb()), "b.onnx", OPTIONS)
    with db.session() as session:
        assert repo.get_model(session, who.tenant_id, "bomb") is None
    assert not list(memory.keys())
