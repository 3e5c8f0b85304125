"""One face over the object-store servers the tests run (SeaweedFS, moto, Azurite,
fake-gcs-server): how to make a bucket, aim Nimbus at it through the cloud's standard
variables, and look into it with the cloud's own client, behind Nimbus's back."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nimbus.storage import ObjectStore
from nimbus.system import free_port
from tests.helpers_azure import KEY, Azurite, azure_store, connection_string
from tests.helpers_gcs import FakeGCS, gcs_store
from tests.helpers_s3 import MotoServer, SeaweedFS, aws_env, s3_client, s3_store

SERVERS = ["seaweedfs", "moto", "azurite", "fake_gcs"]
MISCONFIGURATIONS = ["no bucket", "bad credentials", "unreachable endpoint"]


def received_bytes(proc: subprocess.Popen[bytes] | None) -> int:
    """Bytes a server process has read, its sockets included: how far an upload got."""
    assert proc is not None
    for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


class Cloud(Protocol):
    name: str
    scheme: str

    def bucket(self, name: str) -> str: ...
    def env(self) -> dict[str, str]: ...
    def store(self, bucket: str, prefix: str, *, part_size: int) -> ObjectStore: ...
    def names(self, bucket: str, prefix: str) -> set[str]: ...
    def read(self, bucket: str, name: str) -> bytes: ...
    def write(self, bucket: str, name: str, data: bytes) -> None: ...

    def flip_byte(self, bucket: str, name: str, offset: int) -> None:
        """Corrupt one byte of an object in place, with the cloud's own client."""

    def misconfigured(self, case: str, bucket: str, tmp: Path) -> tuple[str, dict[str, str], str]:
        """A storage URL and environment that are wrong in the way ``case`` says (one of
        MISCONFIGURATIONS), and what the one error line must say."""


class _Flips:
    def flip_byte(self: Any, bucket: str, name: str, offset: int) -> None:
        data = bytearray(self.read(bucket, name))
        data[offset] ^= 0x01
        self.write(bucket, name, bytes(data))


@dataclass
class S3Cloud(_Flips):
    server: SeaweedFS | MotoServer
    name: str
    scheme = "s3"

    def bucket(self, name: str) -> str:
        return self.server.ensure_bucket(name)

    def env(self) -> dict[str, str]:
        return aws_env(self.server.endpoint)

    def store(self, bucket: str, prefix: str, *, part_size: int) -> ObjectStore:
        return s3_store(self.server.endpoint, bucket, prefix, part_size=part_size)

    def names(self, bucket: str, prefix: str) -> set[str]:
        pages = s3_client(self.server.endpoint).get_paginator("list_objects_v2")
        return {
            item["Key"]
            for page in pages.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        }

    def read(self, bucket: str, name: str) -> bytes:
        body = s3_client(self.server.endpoint).get_object(Bucket=bucket, Key=name)["Body"]
        return bytes(body.read())

    def write(self, bucket: str, name: str, data: bytes) -> None:
        s3_client(self.server.endpoint).put_object(Bucket=bucket, Key=name, Body=data)

    def misconfigured(self, case: str, bucket: str, tmp: Path) -> tuple[str, dict[str, str], str]:
        env = self.env()
        if case == "no bucket":
            return "s3://missing-bucket/p", env, "bucket 'missing-bucket' does not exist"
        if case == "bad credentials":
            env["AWS_SECRET_ACCESS_KEY"] += "-wrong"
            return f"s3://{bucket}/p", env, "credentials were refused"
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
        return f"s3://{bucket}/p", env, "unavailable while checking the bucket at start"


@dataclass
class AzureCloud(_Flips):
    server: Azurite
    name: str = "azurite"
    scheme = "az"

    def bucket(self, name: str) -> str:
        return self.server.ensure_container(name)

    def env(self) -> dict[str, str]:
        return self.server.env()

    def store(self, bucket: str, prefix: str, *, part_size: int) -> ObjectStore:
        return azure_store(self.server.endpoint, bucket, prefix, part_size=part_size)

    def names(self, bucket: str, prefix: str) -> set[str]:
        container = self.server.client().get_container_client(bucket)
        return {blob.name for blob in container.list_blobs(name_starts_with=prefix)}

    def read(self, bucket: str, name: str) -> bytes:
        blob = self.server.client().get_blob_client(bucket, name)
        return bytes(blob.download_blob().readall())

    def write(self, bucket: str, name: str, data: bytes) -> None:
        self.server.client().get_blob_client(bucket, name).upload_blob(data, overwrite=True)

    def misconfigured(self, case: str, bucket: str, tmp: Path) -> tuple[str, dict[str, str], str]:
        endpoint, key = self.server.endpoint, KEY
        url, expected = f"az://{bucket}/p", "unavailable while checking the container at start"
        if case == "no bucket":
            url = "az://missing-container/p"
            expected = "container 'missing-container' does not exist"
        elif case == "bad credentials":
            key, expected = "A" * 8 + KEY[8:], "credentials were refused"
        else:
            endpoint = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
        return url, {"AZURE_STORAGE_CONNECTION_STRING": connection_string(endpoint, key)}, expected


@dataclass
class GCSCloud(_Flips):
    server: FakeGCS
    name: str = "fake_gcs"
    scheme = "gs"

    def bucket(self, name: str) -> str:
        return self.server.ensure_bucket(name)

    def env(self) -> dict[str, str]:
        return self.server.env()

    def store(self, bucket: str, prefix: str, *, part_size: int) -> ObjectStore:
        return gcs_store(self.server, bucket, prefix, part_size=part_size)

    def names(self, bucket: str, prefix: str) -> set[str]:
        return {blob.name for blob in self.server.client().list_blobs(bucket, prefix=prefix)}

    def read(self, bucket: str, name: str) -> bytes:
        return bytes(self.server.client().bucket(bucket).blob(name).download_as_bytes())

    def write(self, bucket: str, name: str, data: bytes) -> None:
        self.server.client().bucket(bucket).blob(name).upload_from_string(data)

    def misconfigured(self, case: str, bucket: str, tmp: Path) -> tuple[str, dict[str, str], str]:
        if case == "no bucket":
            return "gs://missing-bucket/p", self.env(), "bucket 'missing-bucket' does not exist"
        if case == "bad credentials":
            # The emulator checks no credential: the refusal under test is the client's own,
            # of application default credentials that are no credentials at all.
            bogus = tmp / "credentials.json"
            bogus.write_text(json.dumps({"type": "service_account", "client_email": "x"}))
            env = {"GOOGLE_APPLICATION_CREDENTIALS": str(bogus)}
            return f"gs://{bucket}/p", env, "no usable Google credentials"
        env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"}
        return f"gs://{bucket}/p", env, "unavailable while checking the bucket at start"
