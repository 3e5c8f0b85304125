"""Models trained elsewhere: ``nimbus models import NAME model.onnx --task T --classes C``
makes an uploaded ONNX file a new version of model ``NAME`` (docs/import.md).

The file is checked (:mod:`nimbus.modelformat.imported`: onnx.checker, shape inference, the
refusals, an ONNX Runtime run) in the limited child of the registration check, never in the
control plane's own process; what passes is stored as a model directory like any other
(``spec.json``, an empty ``weights.safetensors`` marked ``onnx-only``, ``model.onnx`` byte
for byte as uploaded) and recorded as a version with no job (lineage "imported").
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from safetensors.numpy import save as save_safetensors
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import nimbus
from nimbus.db import blobrefs
from nimbus.db import registry as repo
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.errors import Conflict, InvalidInput
from nimbus.modelformat.files import ONNX_FILE, SPEC_FILE, WEIGHTS_FILE
from nimbus.modelformat.import_options import ImportOptions
from nimbus.names import validate_name
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import move_in
from nimbus.services.card_content import card_text
from nimbus.services.isolated import LimitedRunner, Limits, json_reply, limit_text
from nimbus.services.models import MODEL_VERSION, RegisterResult, version_view
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore
from nimbus.wire.cards import CardText
from nimbus.wire.models import ModelVersion

# The weights file of a model whose parameters all live in model.onnx (as AutoML's sklearn
# models): a valid safetensors file with no tensors.
ONNX_ONLY_WEIGHTS = save_safetensors({}, metadata={"format": "onnx-only"})
MAX_FILE_NAME = 255

ImportCheckFn = Callable[[Path, ImportOptions], dict[str, Any]]


class ImportCheck:
    """:func:`nimbus.modelformat.imported.import_spec` in a limited child
    (``python -m nimbus.modelformat.verify_child --import``): the uploaded file is hostile,
    and parsing, checking or running it may take any time or memory. No verdict within the
    limits is a 400 naming the limit."""

    def __init__(self, runner: LimitedRunner | None = None, limits: Limits | None = None):
        self.runner = runner if runner is not None else LimitedRunner()
        self.limits = limits if limits is not None else Limits(wall_seconds=30, cpu_seconds=30)

    def __call__(self, onnx: Path, options: ImportOptions) -> dict[str, Any]:
        """The spec of a model that passed; InvalidInput saying why otherwise."""
        argv = [self.runner.python, "-s", "-m", "nimbus.modelformat.verify_child", "--import"]
        where = {"PYTHONPATH": str(Path(nimbus.__file__).parent.parent)}
        with tempfile.NamedTemporaryFile(prefix="import-options-", suffix=".json") as f:
            f.write(json.dumps(options.to_dict()).encode())
            f.flush()
            outcome = self.runner.run(
                argv, limits=self.limits, inputs=[onnx, Path(f.name)], env=where
            )
        reply = json_reply(outcome)
        limit = outcome.limit or (reply or {}).get("limit")
        if limit:
            raise InvalidInput(
                f"the model was not checked within the {limit_text(str(limit), self.limits)} "
                "for checking an imported model"
            )
        if reply is None:
            raise InvalidInput(
                f"the model could not be checked (the check exited {outcome.returncode})"
            )
        if "spec" not in reply:
            raise InvalidInput(str(reply.get("error") or "the model failed the import checks"))
        spec: dict[str, Any] = reply["spec"]
        return spec


class ModelImports:
    """Imports of ONNX models as versions of a tenant's models."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        check: ImportCheckFn | None = None,
        quotas: QuotaService | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.check: ImportCheckFn = check if check is not None else ImportCheck()
        self.quotas = quotas
        self.clock = clock

    @staticmethod
    def options(**given: Any) -> ImportOptions:
        """The import options as the query string gives them (:meth:`ImportOptions.parse`)."""
        return ImportOptions.parse(**given)

    def import_model(
        self,
        principal: Principal,
        name: str,
        staged: Path,
        sha256: str,
        size: int,
        filename: str,
        options: ImportOptions,
        card: CardText | None = None,
    ) -> RegisterResult:
        """A new version of ``name`` from the ONNX file at ``staged`` (consumed), checked
        first; the version this very file was imported as with these very options, if there
        is one (``created`` False)."""
        require_role(principal, Role.MEMBER)
        validate_name(name, "model name")
        if not filename or len(filename) > MAX_FILE_NAME or "/" in filename:
            raise InvalidInput(f"invalid file name {filename[:40]!r}", field="filename")
        source = {"name": filename, "sha256": sha256, "size": size}
        with self.db.session() as session:
            before = self._imported_before(session, principal, name, source, options)
        if before is not None:
            return RegisterResult(before, created=False)
        spec = self.check(staged, options)
        spec["imported"]["file"] = source
        spec["imported"]["options"] = options.to_dict()
        spec_bytes = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
        blobs = self.blobs.for_tenant(principal.tenant_id)
        model_ref = move_in(blobs, staged, sha256, size)
        spec_ref = blobs.put_bytes(spec_bytes)
        weights_ref = blobs.put_bytes(ONNX_ONLY_WEIGHTS)
        files = {
            SPEC_FILE: {"key": spec_ref.key, "size": spec_ref.size},
            WEIGHTS_FILE: {"key": weights_ref.key, "size": weights_ref.size},
            ONNX_FILE: {"key": model_ref.key, "size": model_ref.size},
        }
        for attempt in range(1, 6):
            try:
                return self._commit(principal, name, spec, files, options, card)
            except IntegrityError:
                if attempt == 5:
                    raise Conflict(f"model {name!r} is being changed concurrently") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _imported_before(
        session: Session,
        principal: Principal,
        name: str,
        source: dict[str, Any],
        options: ImportOptions,
    ) -> ModelVersion | None:
        """The version of ``name`` this very file (name, hash, size) was imported as with
        these very options, if any: found without checking the file again."""
        model = repo.get_model(session, principal.tenant_id, name)
        if model is None:
            return None
        for row in repo.list_versions(session, model.id):
            imported = (row.spec.get("imported") or {}) if row.job_id is None else {}
            if imported.get("file") == source and imported.get("options") == options.to_dict():
                aliases = repo.aliases(session, [model.id])[model.id]
                return version_view(row, name, [a for a, v in aliases.items() if v == row.version])
        return None

    def _commit(
        self,
        principal: Principal,
        name: str,
        spec: dict[str, Any],
        files: dict[str, dict[str, Any]],
        options: ImportOptions,
        card: CardText | None,
    ) -> RegisterResult:
        with self.db.session(write=True) as session:
            blobrefs.lock(session)
            now = self.clock()
            model = repo.get_or_create_model(session, principal.tenant_id, name, now)
            before = self._imported_before(
                session, principal, name, spec["imported"]["file"], options
            )
            if before is not None:
                return RegisterResult(before, created=False)
            if self.quotas is not None:
                size = sum(int(e["size"]) for e in files.values())
                self.quotas.check_bytes(session, principal.tenant_id, size, f"model {name!r}")
            row = repo.create_version(
                session,
                model_id=model.id,
                version=repo.allocate_version_number(session, model),
                job_id=None,
                dataset={"name": None, "version": None, "content_hash": None},
                code_hash=None,
                params={},
                seed=None,
                metrics=None,
                spec=spec,
                files=files,
                created_at=now,
                created_by=principal.token_id,
                card=card_text(card, principal.token_id, now),
            )
            blobrefs.add(session, MODEL_VERSION, row.id, [e["key"] for e in files.values()])
            return RegisterResult(version_view(row, name, []), created=True)
