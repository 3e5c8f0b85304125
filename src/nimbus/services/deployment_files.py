"""What the control plane keeps on its disk for the deployments it supervises, under
``NIMBUS_HOME/deployments/<tenant>/``: each deployment's model directories (copied out of the
blob store, verified) and the tenant's token file its replicas read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from nimbus.db import deployments as repo
from nimbus.db.engine import Database
from nimbus.services.models import ResolvedVersion
from nimbus.serving.fleet.deployment import DeploymentState
from nimbus.storage.blobs import BlobStore, digest_of
from nimbus.system import write_private

TOKEN_FILE = ".tokens"  # per tenant; names never start with a dot, so no deployment clashes


def _intact(directory: Path, files: dict[str, Any]) -> bool:
    """Every model file is there with the size and hash the registry holds."""
    for name in files:
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


class ModelDirs:
    """The model directories of every deployment,
    ``<root>/<tenant>/<name>/models/<model>-<version>/``, and which one each serves now."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        self._current: dict[tuple[str, str], Path] = {}

    def materialize(self, tenant: str, name: str, target: ResolvedVersion) -> Path:
        """The version's model directory, copied out of the blob store (each blob verified
        as it streams) unless an intact copy is already there; it becomes the current one."""
        directory = self.root / tenant / name / "models" / f"{target.model}-{target.version}"
        if not (directory.is_dir() and _intact(directory, target.files)):
            self._copy(directory, target)
        self._current[(tenant, name)] = directory
        return directory

    def _copy(self, directory: Path, target: ResolvedVersion) -> None:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".copy-", dir=directory.parent))
        try:
            for file in target.files:  # MODEL_FILES, and PROGRAM_FILES where registered
                with open(work / file, "wb") as out:
                    for chunk in self.blobs.iter_verified(target.files[file]["key"]):
                        out.write(chunk)
            shutil.rmtree(directory, ignore_errors=True)
            os.rename(work, directory)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def prune(self, tenant: str, name: str, status: dict[str, Any]) -> None:
        """Once every replica runs the current version, older model directories go."""
        current = self._current.get((tenant, name))
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

    def forget(self, tenant: str, name: str) -> None:
        """Remove everything of deployment ``name`` (its replicas are stopped)."""
        self._current.pop((tenant, name), None)
        shutil.rmtree(self.root / tenant / name, ignore_errors=True)


class TokenFiles:
    """Each tenant's token file: the SHA-256 hashes of its usable tokens (any role), one a
    line, mode 0600, replaced atomically. Replicas re-read it when it changes, so a revoked
    or expired token stops working there within about a second."""

    def __init__(
        self,
        db: Database,
        root: Path,
        clock: Callable[[], datetime],
        extra: frozenset[str] = frozenset(),
    ) -> None:
        self.db = db
        self.root = root
        self.clock = clock
        self.extra = extra  # hashes always allowed: the control plane's own replica key
        self._lock = threading.Lock()
        self._text: dict[str, str] = {}

    def path(self, tenant: str) -> Path:
        """Where the token file of ``tenant`` is (what replicas are told to read)."""
        return self.root / tenant / TOKEN_FILE

    def refresh(self, tenants: Mapping[str, int], *, force: bool = False) -> None:
        """Rewrite the token file of each of ``tenants`` (name to id) whose content changed
        (every one if ``force``)."""
        with self._lock:
            with self.db.session() as session:
                hashes = repo.live_token_hashes(session, tenants.values(), self.clock())
            for tenant, tenant_id in tenants.items():
                text = "".join(f"{h}\n" for h in sorted(hashes[tenant_id] | self.extra))
                if force or self._text.get(tenant) != text:
                    (self.root / tenant).mkdir(mode=0o700, parents=True, exist_ok=True)
                    write_private(self.path(tenant), text)
                    self._text[tenant] = text
