"""The Python SDK: one :class:`Client` over the REST API of docs/api.md (httpx underneath).

Every call goes through :meth:`Client._request` (or :meth:`Client._stream` for bodies too big
for memory), which adds the token, translates transport failures into :class:`Unavailable`
and rebuilds server errors with :func:`nimbus.errors.error_from_response`. New resources
(jobs, models, deployments) are a few lines each on top of those two helpers.

Tests inject ``transport=httpx.MockTransport(handler)`` to run without a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

from nimbus.config import Settings, load_settings
from nimbus.datasets.model import Format, Task, validate_name
from nimbus.errors import (
    CorruptBlob,
    InvalidInput,
    NimbusError,
    Unauthorized,
    Unavailable,
    error_from_response,
)

__all__ = ["CHUNK_SIZE", "Client", "DatasetRef", "Progress", "Role", "load_login", "save_login"]

CHUNK_SIZE = 1024 * 1024
CONFIG_FILE = "config"
API = "/api/v1"

Progress = Callable[[int, int], None]
"""A progress callback: ``progress(bytes_done, bytes_total)``."""


class Role(StrEnum):
    """Token roles, weakest first."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"


@dataclass(frozen=True)
class DatasetRef:
    """``NAME`` (the latest version), ``NAME:VERSION`` or ``NAME:latest``."""

    name: str
    version: int | Literal["latest"] | None = None

    @classmethod
    def parse(cls, ref: str) -> DatasetRef:
        name, sep, version = ref.partition(":")
        validate_name(name, "dataset name")
        if not sep:
            return cls(name)
        if version == "latest":
            return cls(name, "latest")
        if not version.isdigit() or int(version) < 1:
            raise InvalidInput(f"invalid dataset reference {ref!r}: use NAME or NAME:VERSION")
        return cls(name, int(version))

    @property
    def segment(self) -> str:
        """The version as it appears in a URL path."""
        return "latest" if self.version is None else str(self.version)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def load_login(home: Path) -> dict[str, str]:
    """The ``{"url", "token"}`` saved by ``nimbus login`` in NIMBUS_HOME/config, or ``{}``."""
    path = home / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the saved login in {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"cannot read the saved login in {path}: not a JSON object")
    return {key: str(data[key]) for key in ("url", "token") if data.get(key)}


def save_login(home: Path, url: str, token: str) -> Path:
    """Write NIMBUS_HOME/config (mode 0600, atomically); returns its path."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url, "token": token}, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o600)  # in case the file existed with looser bits
    os.replace(tmp, path)
    return path


class Client:
    """A connection to one Nimbus control plane, authenticated with one token.

    ``url`` and ``token`` default to NIMBUS_URL / NIMBUS_TOKEN, else to what ``nimbus login``
    saved (the saved token is only sent to the URL it was saved for), else the default URL.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
    ) -> None:
        settings = settings or load_settings()
        explicit = settings.model_fields_set
        saved = load_login(settings.home) if url is None or token is None else {}
        if url is None:
            url = settings.url if "url" in explicit else saved.get("url", settings.url)
        if token is None:
            if "token" in explicit:
                token = settings.token
            elif saved.get("url", "").rstrip("/") == url.rstrip("/"):
                token = saved.get("token")
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"invalid Nimbus URL {url!r}: use http://HOST:PORT or https://…")
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._http = httpx.Client(base_url=self._url, transport=transport, timeout=self._timeout)

    @property
    def url(self) -> str:
        """The control plane's base URL."""
        return self._url

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the two helpers every method is built on ------------------------------------------

    def _headers(self, auth: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if auth:
            if not self._token:
                raise Unauthorized(
                    "no API token: set NIMBUS_TOKEN or run `nimbus login --url URL --token TOKEN`"
                )
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _unreachable(self, exc: httpx.TransportError) -> NimbusError:
        if isinstance(exc, httpx.ConnectError):
            return Unavailable(f"cannot reach Nimbus at {self._url} — is `nimbus server` running?")
        if isinstance(exc, httpx.TimeoutException):
            return Unavailable(f"Nimbus at {self._url} did not answer in time ({exc!r})")
        return Unavailable(f"connection to Nimbus at {self._url} failed: {exc}")

    @staticmethod
    def _error(response: httpx.Response) -> NimbusError:
        try:
            body = response.json()
        except ValueError:
            body = None
        return error_from_response(response.status_code, body)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send one request; return the 2xx response or raise the matching NimbusError."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method,
                path,
                params=query,
                json=json,
                content=content,
                headers=self._headers(auth, headers),
                timeout=timeout or self._timeout,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise self._error(response)
        return response

    @contextmanager
    def _stream(self, method: str, path: str, **params: Any) -> Iterator[httpx.Response]:
        """Like :meth:`_request` but the body is left unread, to be iterated in chunks."""
        query = {k: str(v) for k, v in params.items() if v is not None}
        try:
            with self._http.stream(
                method, path, params=query, headers=self._headers(True, None)
            ) as response:
                if response.is_error:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- health, identity, tokens, audit ---------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}``; needs no token."""
        return dict(self._json("GET", "/healthz", auth=False))

    def whoami(self) -> dict[str, Any]:
        """The caller's token: ``{"token_id", "name", "role", "tenant"}``."""
        return dict(self._json("GET", f"{API}/whoami"))

    def create_token(
        self, name: str, role: Role | str = Role.MEMBER, tenant: str | None = None
    ) -> dict[str, Any]:
        """Create a token (admin); the returned ``token`` secret is shown only this once."""
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(f"invalid role {role!r}: use one of viewer, member, admin") from None
        body: dict[str, Any] = {"name": name, "role": str(role)}
        if tenant is not None:
            body["tenant"] = validate_name(tenant, "tenant")
        return dict(self._json("POST", f"{API}/tokens", json=body))

    def list_tokens(self) -> list[dict[str, Any]]:
        """The tokens of the caller's tenant (never their secrets)."""
        return list(self._json("GET", f"{API}/tokens")["tokens"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token; returns it with ``revoked_at`` set."""
        return dict(self._json("DELETE", f"{API}/tokens/{quote(token_id, safe='')}"))

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit events of the caller's tenant (admin)."""
        return list(self._json("GET", f"{API}/audit", params={"limit": limit})["events"])

    # -- datasets ----------------------------------------------------------------------------

    def upload_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        task: Task | str | None = None,
        format: Format | str | None = None,
        label: str | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a file (or a directory, sent as a .tar) as a new version of dataset ``name``.

        The file is streamed from disk in :data:`CHUNK_SIZE` chunks; ``progress(sent, total)``
        is called after each. Returns the version object (the existing one when identical
        content with the same options was uploaded before).
        """
        validate_name(name, "dataset name")
        params = {
            "task": _choice(Task, task, "task"),
            "format": _choice(Format, format, "format"),
            "label": label,
            "seed": seed,
        }
        source = Path(path)
        if not source.exists():
            raise InvalidInput(f"no such file or directory: {source}")
        with _packed(source) as (file, filename):
            size = file.stat().st_size
            return dict(
                self._json(
                    "POST",
                    f"{API}/datasets/{name}/versions",
                    params={"filename": filename, **params},
                    content=_chunks(file, size, progress),
                    headers={
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream",
                    },
                    # The server prepares the data before it answers: no read deadline.
                    timeout=httpx.Timeout(
                        self._timeout.write, connect=self._timeout.connect, read=None
                    ),
                )
            )

    def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset of the caller's tenant with its latest version number."""
        return list(self._json("GET", f"{API}/datasets")["datasets"])

    def get_dataset(self, name: str) -> dict[str, Any]:
        """A dataset with all its versions."""
        return dict(self._json("GET", f"{API}/datasets/{validate_name(name, 'dataset name')}"))

    def get_version(self, ref: str | DatasetRef) -> dict[str, Any]:
        """One version: ``ref`` is ``NAME`` (latest) or ``NAME:VERSION``."""
        ref = _ref(ref)
        return dict(self._json("GET", f"{API}/datasets/{ref.name}/versions/{ref.segment}"))

    def download_dataset(
        self, ref: str | DatasetRef, dir: str | os.PathLike[str], progress: Progress | None = None
    ) -> list[Path]:
        """Write every file of a version into ``dir`` plus its metadata as ``version.json``.

        Each file is streamed to disk, checked against its content hash and size, and only
        then renamed into place. The source keeps its uploaded name where that is safe.
        """
        version = self.get_version(ref)
        target = Path(dir)
        files: dict[str, dict[str, Any]] = version.get("files") or {}
        total = sum(int(meta.get("size", 0)) for meta in files.values())
        done = 0
        written: list[Path] = []
        base = f"{API}/datasets/{version['dataset']}/versions/{version['version']}/files"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for key, meta in files.items():
                out = target / _local_name(key, meta, files)
                with self._stream("GET", f"{base}/{quote(key, safe='')}") as response:
                    done = _save(response, out, meta, done, total, progress)
                written.append(out)
            meta_path = target / "version.json"
            meta_path.write_text(json.dumps(version, indent=2) + "\n")
        except OSError as exc:
            raise InvalidInput(f"cannot write to {target}: {exc.strerror or exc}") from None
        return [*written, meta_path]

    def delete_dataset(self, ref: str | DatasetRef) -> dict[str, Any]:
        """``NAME:VERSION`` deletes one version; a bare ``NAME`` deletes the whole dataset."""
        ref = _ref(ref)
        if ref.version is None:
            return dict(self._json("DELETE", f"{API}/datasets/{ref.name}"))
        return dict(self._json("DELETE", f"{API}/datasets/{ref.name}/versions/{ref.segment}"))


def _ref(ref: str | DatasetRef) -> DatasetRef:
    return ref if isinstance(ref, DatasetRef) else DatasetRef.parse(ref)


def _choice(enum: type[StrEnum], value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return str(enum(value))
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InvalidInput(f"invalid {what} {value!r}: use one of {allowed}") from None


@contextmanager
def _packed(path: Path) -> Iterator[tuple[Path, str]]:
    """A file as is; a directory as a temporary, reproducible .tar of its contents."""
    if not path.is_dir():
        yield path, path.name
        return
    with tempfile.TemporaryDirectory(prefix="nimbus-upload-") as tmp:
        archive = Path(tmp) / f"{path.resolve().name or 'dataset'}.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(path.rglob("*")):
                if child.is_symlink() or not (child.is_file() or child.is_dir()):
                    continue  # links could point anywhere; the server would refuse them anyway
                tar.add(
                    child,
                    arcname=child.relative_to(path).as_posix(),
                    recursive=False,
                    filter=_normalized,
                )
        yield archive, archive.name


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same files, same bytes: re-uploading a folder finds the existing version.
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _chunks(path: Path, total: int, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)


def _local_name(key: str, meta: Mapping[str, Any], files: Mapping[str, Any]) -> str:
    """The file name on disk: the source keeps its uploaded name unless that could clash."""
    name = Path(str(meta.get("name") or "")).name
    if (
        key == "source"
        and name
        and not name.startswith(".")
        and name not in files
        and name != "version.json"
    ):
        return name
    return Path(key).name or "file"


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _save(
    response: httpx.Response,
    out: Path,
    meta: Mapping[str, Any],
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    """Stream a response body to ``out`` via a temporary file, verifying hash and size."""
    digest = hashlib.sha256()
    size = 0
    part = out.with_name(f".{out.name}.part")
    try:
        with part.open("wb") as sink:
            for chunk in response.iter_bytes(CHUNK_SIZE):
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(done + size, total)
        expected = str(meta.get("key", "")).rpartition("/")[2].lower()
        if _is_sha256(expected) and digest.hexdigest() != expected:
            raise CorruptBlob(f"{out.name}: content does not match its hash {expected}")
        if "size" in meta and size != int(meta["size"]):
            raise CorruptBlob(f"{out.name}: got {size} bytes, expected {meta['size']}")
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return done + size
