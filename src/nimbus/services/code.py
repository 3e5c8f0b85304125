"""Code artifacts: a training script (``.py``), a code directory (``.tar`` with ``main.py``
at its root) or a notebook (``.ipynb``) that jobs run instead of a built-in model.

An upload is checked before it is stored (the script compiles, which a limited child process
finds out: :class:`CompileCheck`; the archive is a tar
without links, special files, absolute or ``..`` paths, within size limits; the notebook
is a valid nbformat 4 document of a Python kernel) and stored
once per tenant and content. Its reference is ``code:<blob key>``; the blob is held by a
reference owned by the tenant's code record, so it outlives every dataset deletion.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nimbus.datasets.archive import ArchiveKind, iter_files, sniff_archive
from nimbus.datasets.domain import IngestLimits
from nimbus.db import blobrefs
from nimbus.db import code as repo
from nimbus.db.engine import Database
from nimbus.db.tables import CodeArtifactRow
from nimbus.errors import InvalidDataset, InvalidInput, NotFound, PayloadTooLarge
from nimbus.security import Principal, Role, require_role
from nimbus.services.blobs import discard, move_in, pin
from nimbus.services.isolated import LimitedRunner, Limits, json_reply, limit_text
from nimbus.services.quotas import QuotaService
from nimbus.storage.blobs import BlobStore, digest_of, key_for
from nimbus.wire.code import CodeArtifact, CodeFormat

log = logging.getLogger(__name__)

REF_PREFIX = "code:"
ENTRY = "main.py"  # what runs: the uploaded script itself, or main.py at an archive's root
NOTEBOOK_ENTRY = "main.ipynb"
MAX_SCRIPT_BYTES = 16 * 1024**2  # one source file (413 past it); compiled at upload, in a child
MAX_ARCHIVE_MEMBERS = 50_000
PY, TAR, IPYNB = "py", "tar", "ipynb"
_PY_SUFFIXES = (".py",)
_IPYNB_SUFFIXES = (".ipynb",)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_code_ref(model: str) -> bool:
    return model.startswith(REF_PREFIX)


def parse_ref(ref: str) -> str:
    """The content hash ``code:sha256/<2 hex>/<64 hex>`` names (the tenant's blob key is
    ``BlobStore.for_tenant(id).key_for`` of it); a malformed reference is a 400."""
    key = ref[len(REF_PREFIX) :] if is_code_ref(ref) else ""
    try:
        return digest_of(key)
    except NotFound:
        raise InvalidInput(
            f"invalid code reference {ref[:100]!r}: use the 'ref' POST /api/v1/code returned "
            "(code:sha256/...)",
            field="model",
        ) from None


def code_view(row: CodeArtifactRow) -> CodeArtifact:
    """A stored code artifact as the API shows it, named by its reference (its content
    hash: the same whether the blob key is tenant-scoped or not)."""
    return CodeArtifact(
        ref=REF_PREFIX + key_for(digest_of(row.blob_key)),
        sha256=digest_of(row.blob_key),
        size=row.size,
        format=CodeFormat(row.format),
        entry=row.entry,
        created_at=row.created_at,
    )


@dataclass(frozen=True)
class CodeInfo:
    """What a job needs to know of its code."""

    id: int
    key: str
    size: int
    format: str
    entry: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "size": self.size,
            "format": self.format,
            "entry": self.entry,
        }


def _format_of(filename: str | None, path: Path) -> str:
    if filename is None:
        return TAR if sniff_archive(path) in (ArchiveKind.TAR, ArchiveKind.TAR_GZ) else PY
    lower = filename.lower()
    if lower.endswith(_PY_SUFFIXES):
        return PY
    if lower.endswith(_TAR_SUFFIXES):
        return TAR
    if lower.endswith(_IPYNB_SUFFIXES):
        return IPYNB
    raise InvalidInput(
        f"invalid filename {filename[:100]!r}: upload a .py file, a .ipynb notebook or a .tar "
        "of a directory with main.py at its root",
        field="filename",
    )


# Run in the limited child (``python -I -c``: nothing of Nimbus needed); the source is fd 3.
_COMPILE = """\
import json, os, sys
name = sys.argv[1]
with os.fdopen(3, "rb") as f:
    data = f.read()
def reply(error=None, limit=None):
    print(json.dumps({"error": error, "limit": limit}), flush=True)
try:
    source = data.decode("utf-8")
except UnicodeDecodeError as exc:
    reply(f"{name} is not UTF-8 text (byte {exc.start})")
    sys.exit(0)
del data
try:
    compile(source, name, "exec", dont_inherit=True)
except SyntaxError as exc:
    reply(f"{name} line {exc.lineno}: {exc.msg}")
except MemoryError:
    reply(f"{name} does not compile within the memory limit", "memory")
except (ValueError, RecursionError) as exc:
    reply(f"{name} does not compile: {exc}")
else:
    reply()
"""


class CompileCheck:
    """Whether a file is UTF-8 Python source that compiles, found out in a limited child
    (:mod:`nimbus.services.isolated`): compiling a hostile 16 MiB script takes gigabytes
    and seconds of one core, which must not be the control plane's."""

    def __init__(self, runner: LimitedRunner | None = None, limits: Limits | None = None):
        self.runner = runner if runner is not None else LimitedRunner()
        self.limits = limits if limits is not None else Limits(wall_seconds=30, cpu_seconds=20)

    def __call__(self, path: Path, name: str) -> None:
        """A 400 naming the line (or the limit) unless ``path`` compiles."""
        outcome = self.runner.run(
            [self.runner.python, "-I", "-c", _COMPILE, name], limits=self.limits, inputs=[path]
        )
        reply = json_reply(outcome)
        if outcome.limit is not None or (reply is not None and reply.get("limit")):
            what = limit_text(outcome.limit or str(reply and reply.get("limit")), self.limits)
            raise InvalidInput(f"{name} does not compile within the {what}")
        if reply is None:
            log.error(
                "the compile check failed: %s", outcome.stderr[-2000:].decode(errors="replace")
            )
            raise InvalidInput(
                f"{name} could not be checked (the check exited {outcome.returncode})"
            )
        if reply.get("error"):
            raise InvalidInput(str(reply["error"]))


def check_source(data: bytes, name: str, compile_check: CompileCheck | None = None) -> None:
    """A 400 naming the line unless ``data`` is UTF-8 Python source that compiles."""
    with tempfile.NamedTemporaryFile(prefix="nimbus-source-") as f:
        f.write(data)
        f.flush()
        (compile_check or CompileCheck())(Path(f.name), name)


def check_script(path: Path, size: int, compile_check: CompileCheck | None = None) -> None:
    """A 413 past :data:`MAX_SCRIPT_BYTES`; else the script must compile."""
    if size > MAX_SCRIPT_BYTES:
        raise PayloadTooLarge(
            f"a script is limited to {MAX_SCRIPT_BYTES} bytes; got {size}", limit=MAX_SCRIPT_BYTES
        )
    (compile_check or CompileCheck())(path, ENTRY)


def check_notebook(path: Path, size: int, name: str) -> None:
    """A 413 past :data:`MAX_SCRIPT_BYTES`; else a 400 naming the problem unless ``path``
    is a valid nbformat 4 notebook (its JSON schema) whose kernel, if it names one, runs
    Python. Cells are not compiled: they may hold IPython syntax (``%magic``, ``!cmd``)."""
    if size > MAX_SCRIPT_BYTES:
        raise PayloadTooLarge(
            f"a notebook is limited to {MAX_SCRIPT_BYTES} bytes; got {size}",
            limit=MAX_SCRIPT_BYTES,
        )
    # Imported here: nbformat and jsonschema under it hold ~12 MB in every control plane
    # that never sees a notebook (its peak RSS is a target: docs/storage.md).
    import nbformat
    from nbformat.warnings import MissingIDFieldWarning

    try:
        text = path.read_bytes().decode("utf-8")
        notebook = nbformat.reads(text, as_version=nbformat.NO_CONVERT)  # type: ignore[no-untyped-call]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name} is not UTF-8 text (byte {exc.start})") from None
    except nbformat.ValidationError as exc:  # reading checks the keys it needs
        raise InvalidInput(f"{name} is not a valid notebook: {_first_line(exc)}") from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise InvalidInput(f"{name} is not a notebook: {_first_line(exc)}") from None
    if notebook.get("nbformat") != 4:
        raise InvalidInput(
            f"{name} is an nbformat {notebook.get('nbformat')} notebook: save it as nbformat 4 "
            "(any Jupyter of the last decade does)"
        )
    try:
        with warnings.catch_warnings():  # cells without ids: papermill gives them ids
            warnings.simplefilter("ignore", MissingIDFieldWarning)
            nbformat.validate(notebook)
    except nbformat.ValidationError as exc:
        raise InvalidInput(f"{name} is not a valid notebook: {_first_line(exc)}") from None
    kernel = notebook.metadata.get("kernelspec") or {}
    language = str(
        kernel.get("language") or notebook.metadata.get("language_info", {}).get("name", "python")
    )
    if language.lower() != "python":
        raise InvalidInput(f"{name} is a {language[:40]} notebook: jobs run Python notebooks")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def check_archive(
    path: Path, filename: str, max_unpacked: int, compile_check: CompileCheck | None = None
) -> None:
    """Every member safe (see :mod:`nimbus.datasets.archive`), ``main.py`` at the root."""
    if sniff_archive(path) not in (ArchiveKind.TAR, ArchiveKind.TAR_GZ):
        raise InvalidInput(f"{filename!r} is not a tar archive")
    limits = IngestLimits(max_unpacked_bytes=max_unpacked, max_members=MAX_ARCHIVE_MEMBERS)
    found = False
    try:
        for member in iter_files(path, limits, filename):
            if member.path == ENTRY:
                check_source(member.read_all(MAX_SCRIPT_BYTES), ENTRY, compile_check)
                found = True
    except InvalidDataset as exc:  # the archive helpers speak of datasets; this is code
        raise InvalidInput(exc.message) from None
    if not found:
        raise InvalidInput(f"archive {filename!r} has no main.py at its root")


class CodeService:
    """Code artifacts of every tenant; each method acts for one principal, within its tenant."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        max_unpacked_bytes: int,
        compile_check: CompileCheck | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        quotas: QuotaService | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.max_unpacked_bytes = max_unpacked_bytes
        self.compile_check = compile_check if compile_check is not None else CompileCheck()
        self.clock = clock
        self.quotas = quotas

    def upload(
        self, principal: Principal, path: Path, sha256: str, filename: str | None
    ) -> CodeArtifact:
        """Check and store the staged upload at ``path`` (consumed); returns the artifact.
        Uploading identical content again returns the existing artifact."""
        blobs = self.blobs.for_tenant(principal.tenant_id)
        key = blobs.key_for(sha256)
        try:
            require_role(principal, Role.MEMBER)
            size = path.stat().st_size
            kind = _format_of(filename, path)
            if kind == PY:
                check_script(path, size, self.compile_check)
            elif kind == IPYNB:
                check_notebook(path, size, filename or NOTEBOOK_ENTRY)
            else:
                check_archive(
                    path, filename or "code.tar", self.max_unpacked_bytes, self.compile_check
                )
            with self.db.session() as session:
                existing = repo.get(session, principal.tenant_id, key)
                if existing is not None:
                    return code_view(existing)
                if self.quotas is not None:
                    self.quotas.check_bytes(session, principal.tenant_id, size, "code")
            pin_id = pin(self.db, [key])
            try:
                move_in(blobs, path, sha256, size)
                with self.db.session(write=True) as session:
                    blobrefs.lock(session)
                    row = repo.get(session, principal.tenant_id, key)
                    if row is None and self.quotas is not None:  # again, with the insert
                        self.quotas.check_bytes(session, principal.tenant_id, size, "code")
                    row = row or repo.create(
                        session,
                        tenant_id=principal.tenant_id,
                        blob_key=key,
                        size=size,
                        format=kind,
                        entry=NOTEBOOK_ENTRY if kind == IPYNB else ENTRY,
                        created_by=principal.token_id,
                        now=self.clock(),
                    )
                    blobrefs.unpin(session, pin_id, [key])
                    view = code_view(row)
            except BaseException:
                discard(self.db, self.blobs, [key], pin_id)  # the transaction rolled back
                raise
            return view
        finally:
            path.unlink(missing_ok=True)

    def resolve(self, principal: Principal, ref: str) -> CodeInfo:
        """The tenant's code artifact named by ``ref`` (404 for unknown or another tenant's)."""
        key = self.blobs.for_tenant(principal.tenant_id).key_for(parse_ref(ref))
        with self.db.session() as session:
            row = repo.get(session, principal.tenant_id, key)
            if row is None:
                raise NotFound(f"code artifact {ref[:100]!r} not found: upload it first")
            return CodeInfo(row.id, row.blob_key, row.size, row.format, row.entry)
