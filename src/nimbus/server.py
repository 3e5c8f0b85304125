"""The control plane process: ``python -m nimbus.server [--host H] [--port P]``.

:func:`bootstrap` prepares NIMBUS_HOME and the metadata store and makes sure an admin
token exists; :func:`run` serves the API with uvicorn until SIGTERM or SIGINT, finishing
requests in flight before it exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from nimbus.api.app import create_app
from nimbus.config import Settings, load_settings
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.services.tokens import TokenService
from nimbus.storage.factory import open_object_store

log = logging.getLogger("nimbus.server")
ADMIN_TOKEN_FILE = "admin-token"
STALE_TEMP_SECONDS = 3600
GRACEFUL_SHUTDOWN_SECONDS = 15


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` with mode 0600, atomically (never readable by others,
    not even for a moment)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: Path, older_than: float = STALE_TEMP_SECONDS) -> None:
    """Leftovers of a crashed process (uploads, ingest work directories) older than an hour;
    younger ones may belong to another server sharing this directory."""
    if not directory.is_dir():
        return
    cutoff = time.time() - older_than
    for entry in directory.iterdir():
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove stale temporary file %s", entry)


def staging_dirs(settings: Settings) -> list[Path]:
    """Where uploads and ingest work directories are written before they are stored."""
    store = open_object_store(settings.resolved_storage_url)
    dirs = [settings.tmp_dir, settings.tmp_dir / "staging"]
    staging = getattr(store, "staging_dir", None)
    return [*dirs, Path(staging)] if staging is not None else dirs


def bootstrap(settings: Settings) -> str | None:
    """Create NIMBUS_HOME (0700), migrate the metadata store, create tenant ``default`` and,
    when it has no usable admin token, one admin token: printed once to stdout and written
    to ``$NIMBUS_HOME/admin-token`` (0600). Returns the new secret, or None."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(mode=0o700, exist_ok=True)
    for directory in staging_dirs(settings):
        remove_stale_temp_files(directory)
    db = Database(settings.resolved_database_url)
    try:
        upgrade(db.engine)
        secret = TokenService(db).ensure_bootstrap_admin()
    finally:
        db.dispose()
    if secret is not None:
        write_secret(home / ADMIN_TOKEN_FILE, secret)
        print(f"admin token: {secret}", flush=True)
        print(f"(saved to {home / ADMIN_TOKEN_FILE}; it is not shown again)", flush=True)
    return secret


def run(settings: Settings) -> None:
    """Bootstrap, then serve the API on ``settings.host:settings.port`` until signalled."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    bootstrap(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    # uvicorn handles SIGTERM and SIGINT: it stops accepting, finishes the requests in
    # flight, then re-raises the signal with the handler that was in place before it ran.
    # A no-op handler for SIGTERM makes that graceful stop end the process with status 0.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _ignore)
    uvicorn.Server(config).run()


def _ignore(signum: int, frame: object) -> None:
    """Signal handler that does nothing."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nimbus.server", description="Nimbus control plane")
    parser.add_argument("--host", default=None, help="address to listen on (NIMBUS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (NIMBUS_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings(host=args.host, port=args.port)
    try:
        run(settings)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
