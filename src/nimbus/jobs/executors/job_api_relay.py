"""The job API relay of a Ray node: how a sandboxed attempt with no network reaches the
control plane.

A sandboxed attempt on a Ray node runs in a network namespace of its own (only its
loopback), as a local one does. Locally the control plane itself listens on a unix socket
bound into every sandbox; on a Ray node the control plane is another machine, reached over
TCP. The node's agent keeps one :class:`JobApiRelay`: for each control plane URL it is
asked for (:meth:`JobApiRelay.socket_for`), a unix socket in its directory (bound
read-only into each sandbox at :data:`~nimbus.jobs.sandbox.JOB_API_DIR`) whose every
connection is piped to that URL's host and port, in TLS when the URL is ``https``. The
attempt can reach that one address and nothing else: not Ray's daemons, not the LAN.

The URLs come from the control plane (the attempt's launch), never from the job. The
bytes are relayed as they are: the control plane authenticates each request (the job
token) as it does any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from nimbus.jobs.sandbox import JOB_API_DIR
from nimbus.system import bind_unix

log = logging.getLogger(__name__)
CONNECT_SECONDS = 10.0
_CHUNK = 65536


def upstream_of(url: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of a control plane URL; ValueError when it is not ``http(s)://``
    with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the job API relay needs an http(s)://HOST[:PORT] URL, not {url!r}")
    tls = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if tls else 80), tls


def socket_name(url: str) -> str:
    """The relay socket's file name for ``url`` (one per control plane URL)."""
    host, port, tls = upstream_of(url)
    digest = hashlib.sha256(f"{host}:{port}:{tls}".encode()).hexdigest()[:16]
    return f"job-api-{digest}.sock"


def sandbox_url(url: str) -> str:
    """The ``NIMBUS_URL`` a sandboxed attempt is given for the control plane at ``url``."""
    return f"unix:{JOB_API_DIR}/{socket_name(url)}"


class JobApiRelay:
    """Unix sockets in ``directory``, each relaying to one control plane; the relaying runs
    on an event loop in a daemon thread of its own. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._loop = asyncio.new_event_loop()
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="job-api-relay", daemon=True
        )
        self._thread.start()

    def socket_for(self, url: str) -> str:
        """The sandbox's ``NIMBUS_URL`` for ``url``, its relay listening from now on."""
        name = socket_name(url)
        with self._lock:
            if name not in self._servers:
                host, port, tls = upstream_of(url)
                sock = bind_unix(self.directory / name)
                future = asyncio.run_coroutine_threadsafe(
                    self._serve(sock, host, port, tls), self._loop
                )
                self._servers[name] = future.result(timeout=CONNECT_SECONDS)
        return sandbox_url(url)

    async def _serve(
        self, sock: socket.socket, host: str, port: int, tls: bool
    ) -> asyncio.AbstractServer:
        context = ssl.create_default_context() if tls else None

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context), CONNECT_SECONDS
                )
            except (OSError, TimeoutError) as exc:
                log.warning("job API relay: cannot reach %s:%d: %s", host, port, exc)
                writer.close()  # the job sees the connection end: its client retries
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for end in (writer, up_writer):
                    end.close()

        return await asyncio.start_unix_server(relay, sock=sock)

    def close(self) -> None:
        """Stop listening, end the connections, remove the sockets, end the thread."""

        async def stop() -> None:
            for server in self._servers.values():
                server.close()
            relaying = asyncio.all_tasks() - {asyncio.current_task()}
            for task in relaying:
                task.cancel()
            await asyncio.gather(*relaying, return_exceptions=True)

        with self._lock:
            if self._loop.is_closed():
                return
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(CONNECT_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONNECT_SECONDS)
            self._loop.close()
            for name in self._servers:
                (self.directory / name).unlink(missing_ok=True)
            self._servers.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until the end of ``reader``, then half-close ``writer`` where it can be (plain
    sockets), else close it, which ends the other direction too (TLS)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
            return
    except OSError:  # reset by either end
        pass
    writer.close()
