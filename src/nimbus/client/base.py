"""The connection every SDK call goes through, and the saved login.

:class:`BaseClient` owns the httpx client. Every call goes through :meth:`BaseClient._request`
(or :meth:`BaseClient._stream` for bodies too big for memory), which adds the token,
translates transport failures into :class:`Unavailable` and rebuilds server errors with
:func:`nimbus.errors.error_from_response`. The resource mixins (tokens, datasets, jobs,
models, deployments: one module each) are a few lines per route on top of those helpers.
:func:`save_login` writes the login with :func:`nimbus.system.write_private`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from nimbus.client.transfer import Progress, Tally, save
from nimbus.config import Settings, load_settings
from nimbus.errors import (
    InvalidInput,
    NimbusError,
    Unauthorized,
    Unavailable,
    error_from_response,
)
from nimbus.system import write_private
from nimbus.wire.base import parse

M = TypeVar("M")

CONFIG_FILE = "config"
API = "/api/v1"
FILES_AT_ONCE = 4  # files of a version downloaded at a time


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
    write_private(path, json.dumps({"url": url, "token": token}, indent=2))
    return path


class BaseClient:
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
        self._settings = settings
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

    def __enter__(self) -> BaseClient:
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
        try:
            response = self._http.request(
                method,
                path,
                params=_query(params),
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
    def _stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Iterator[httpx.Response]:
        """Like :meth:`_request` but the body is left unread, to be iterated in chunks.

        Transport failures while the caller reads the body also become :class:`Unavailable`.
        """
        try:
            with self._http.stream(
                method,
                path,
                params=_query(params),
                headers=self._headers(True, headers),
                timeout=timeout or self._timeout,
            ) as response:
                if response.is_error:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """The response body of ``method path`` parsed as the wire model ``model`` (or a type
        form such as ``list[X]``)."""
        return parse(model, self._json(method, path, **kwargs))

    def _download_version(
        self,
        version: Mapping[str, Any],
        files_path: str,
        dir: str | os.PathLike[str],
        progress: Progress | None,
        local_name: Callable[[str, dict[str, Any]], str],
        *,
        direct: bool = False,
    ) -> list[Path]:
        """Stream every file of ``version`` from ``files_path/{name}`` into ``dir`` (each
        checked against its hash and size before it is renamed into place), then write the
        metadata as ``version.json``. ``local_name`` picks, or refuses, each file's name.
        With ``direct``, each file comes straight from the storage service when the server
        hands out a link (``files_path/{name}/link``)."""
        files: dict[str, dict[str, Any]] = dict(version.get("files") or {})
        tally = Tally(sum(int(meta.get("size", 0)) for meta in files.values()), progress)
        target = Path(dir)
        outs = {name: target / local_name(name, meta) for name, meta in files.items()}

        def fetch(name: str) -> None:
            meta, out, report = files[name], outs[name], tally.for_file()
            if direct and (
                self._download_direct(files_path, name, out, meta, 0, tally.total, report)
                is not None
            ):
                return
            with self._stream("GET", f"{files_path}/{quote(name, safe='')}") as response:
                save(response, out, meta, 0, tally.total, report)

        try:
            target.mkdir(parents=True, exist_ok=True)
            # A few files at a time: each costs a round trip to the control plane, which
            # a loaded server answers slowly, and small ones are mostly that.
            with ThreadPoolExecutor(FILES_AT_ONCE, thread_name_prefix="file") as pool:
                futures = [pool.submit(fetch, name) for name in files]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()
                for future in finished:
                    future.result()
            written = list(outs.values())
            meta_path = target / "version.json"
            meta_path.write_text(json.dumps(version, indent=2) + "\n")
        except OSError as exc:
            raise InvalidInput(f"cannot write to {target}: {exc.strerror or exc}") from None
        return [*written, meta_path]

    def _download_direct(
        self,
        files_path: str,
        name: str,
        out: Path,
        meta: Mapping[str, Any],
        done: int,
        total: int,
        progress: Progress | None,
    ) -> int | None:
        """Fetch one file straight from the storage service; None: not offered here (the
        direct-transfers mixin overrides this)."""
        return None

    def _no_read_deadline(self) -> httpx.Timeout:
        """The client's timeouts without a read deadline: for answers that take long."""
        return httpx.Timeout(self._timeout.write, connect=self._timeout.connect, read=None)


def _query(params: Mapping[str, Any] | None) -> dict[str, str | list[str]]:
    """Query parameters as strings, leaving out the unset ones; a list is the parameter
    repeated, once for each item."""
    out: dict[str, str | list[str]] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        else:
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
