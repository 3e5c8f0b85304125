"""A real Azure Blob server for tests: Azurite (npm package ``azurite``, installed into
``.tools/`` by ``make services``), on a loopback port of its own, data in a temp dir."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from nimbus.storage.azure import AzureObjectStore
from nimbus.system import free_port
from tests.helpers_servers import StorageServer

# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ROOT = Path(__file__).resolve().parents[1]


def azurite_binary() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


def connection_string(endpoint: str, key: str = KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint};"
    )


class Azurite(StorageServer):
    """``azurite-blob`` in a temp dir: blob service only, on disk, no telemetry."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="nimbus-azurite-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line, as documented in docs/storage.md."""
        return [
            self.binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.dir / "data"),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]

    def start(self, timeout: float = 60.0) -> Azurite:
        (self.dir / "data").mkdir(exist_ok=True)
        self.spawn(self.command(), "azurite.log")

        def answers() -> None:
            # Any HTTP answer will do (the SDK's own client retries for many seconds).
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

        self.wait_ready("azurite", answers, timeout)
        return self

    def client(self) -> Any:
        """azure-storage-blob's client: the cloud's own tool, to look behind Nimbus's back."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(connection_string(self.endpoint))

    def ensure_container(self, name: str) -> str:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.client().create_container(name)
        return name

    def env(self) -> dict[str, str]:
        """Azure's standard variable that points a process at this server."""
        return {"AZURE_STORAGE_CONNECTION_STRING": connection_string(self.endpoint)}

    def log(self) -> str:
        return self.read_log("azurite.log", tail=3000)


def azure_store(
    endpoint: str, container: str, prefix: str, *, part_size: int = 5 * 1024 * 1024
) -> AzureObjectStore:
    """A store configured explicitly (the tests' process environment stays untouched)."""
    config = {"account_name": ACCOUNT, "account_key": KEY, "endpoint": endpoint}
    return AzureObjectStore(
        container, prefix, config=config, part_size=part_size, retry_timeout=timedelta(seconds=3)
    )
