"""Encryption at rest through a real ``nimbus server``: on SeaweedFS (s3://) and on a local
directory (file://), the store holds no plaintext, each tenant's copy is its own, a rotated
master key keeps everything readable, a wrong key stops the server at start, and the whole
journey (upload, train, register, deploy, predict) works with encryption on."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.demo_data import write_digits_zip
from nimbus.storage.keyring import MasterKey
from nimbus.system import free_port
from tests.helpers import ServerProcess
from tests.helpers_s3 import SeaweedFS, aws_env, s3_client

pytestmark = pytest.mark.slow

MARKER = "zq-marker-4b1d9e"
KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
FAST = {"NIMBUS_SCHEDULER_TICK_SECONDS": "0.1", "NIMBUS_CAPACITY_CPUS": "2"}


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def marker_csv(path: Path, rows: int = 60) -> Path:
    lines = ["text,label"]
    for i in range(rows):
        lines.append(f"review {i} says {MARKER} was {'great' if i % 2 else 'awful'},{i % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def has_marker(data: bytes) -> bool:
    """The marker in any encoding a stored file could hold text in (UTF-8, NumPy's UTF-32)."""
    return any(MARKER.encode(enc) in data for enc in ("utf-8", "utf-32-le", "utf-16-le"))


class Store:
    """Where one server keeps its blobs, and every stored object read behind its back."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.env: dict[str, str] = {}
        if kind == "s3":
            server: SeaweedFS = request.getfixturevalue("seaweedfs")
            self.endpoint = server.endpoint
            self.bucket = server.ensure_bucket("encrypted-journeys")
            self.prefix = f"{tmp_path.name}-{os.getpid()}"
            self.env = {
                **aws_env(server.endpoint),
                "NIMBUS_STORAGE_URL": f"s3://{self.bucket}/{self.prefix}",
            }
        else:
            self.root = tmp_path / "store"
            self.env = {"NIMBUS_STORAGE_URL": f"file://{self.root}"}

    def objects(self) -> dict[str, bytes]:
        """Every object with its bytes, read with the backend's own tools (boto3, files)."""
        if self.kind == "s3":
            client = s3_client(self.endpoint)
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/"
            )
            keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
            return {
                key[len(self.prefix) + 1 :]: client.get_object(Bucket=self.bucket, Key=key)[
                    "Body"
                ].read()
                for key in keys
            }
        return {
            p.relative_to(self.root).as_posix(): p.read_bytes()
            for p in self.root.rglob("*")
            if p.is_file()
        }


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return Store(request.param, tmp_path, request)


def nimbus(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NIMBUS_", "AWS_"))}
    return subprocess.run(
        [str(Path(sys.executable).parent / "nimbus"), *args],
        env={**base, "NIMBUS_JOB_ISOLATION": "none", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def test_store_holds_no_plaintext_rotation_and_wrong_keys(
    store: Store, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    home = tmp_path / "home"
    env = {**store.env, "NIMBUS_ENCRYPTION_KEY": b64(KEY)}
    server = ServerProcess(home, env=env).start()
    servers.append(server)
    assert f"encryption at rest on: master key {MasterKey(KEY).id}" in server.log()

    source = marker_csv(tmp_path / "reviews.csv")
    assert has_marker(source.read_bytes())  # the check below can find what it looks for
    with Client(server.url, server.admin_token, settings=Settings(home=home)) as admin:
        mine = admin.upload_dataset("reviews", source)
        other_token = admin.create_token("umbra-member", tenant="umbra").token
        script = tmp_path / "train.py"
        script.write_text(f"# {MARKER}\nprint('training')\n")
        code = admin.upload_code(script)
        assert code.ref.startswith("code:sha256/")  # the same reference as without encryption
        job = admin.submit_job("reviews", code.ref)  # the reference resolves to the tenant's blob
        admin.cancel_job(job.id)
    with Client(server.url, other_token, settings=Settings(home=home)) as other:
        theirs = other.upload_dataset("reviews", source)

    stored = store.objects()
    assert stored and all(key.startswith("tenants/") for key in stored), sorted(stored)
    hits = [key for key, data in stored.items() if has_marker(data)]
    assert hits == []
    if store.kind == "file":  # and nothing else under NIMBUS_HOME holds a stored blob
        assert not (home / "blobs").exists()
    # Identical data in two tenants is stored twice, once under each tenant's key.
    source_digest = mine.files["source"].key.rsplit("/", 1)[1]
    assert theirs.files["source"].key.rsplit("/", 1)[1] == source_digest
    copies = sorted(key for key in stored if key.endswith(source_digest))
    assert len(copies) == 2 and copies[0].split("/")[1] != copies[1].split("/")[1]

    def readable(url: str, token: str, out: Path) -> None:
        with Client(url, token, settings=Settings(home=home)) as api:
            files = api.download_dataset("reviews", out)
        back = next(f for f in files if f.name == "reviews.csv")
        assert back.read_bytes() == source.read_bytes()

    readable(server.url, server.admin_token, tmp_path / "before")
    server.stop()

    # Rotation: the data keys are re-wrapped, no stored object changes, all stays readable.
    new_key_file = tmp_path / "new.key"
    new_key_file.write_text(b64(NEW_KEY) + "\n")
    home_env = {"NIMBUS_HOME": str(home), **env}
    rotated = nimbus(
        "admin", "rotate-key", "--new-key-file", str(new_key_file), "--json", env=home_env
    )
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {
        "old_key_id": MasterKey(KEY).id,
        "new_key_id": MasterKey(NEW_KEY).id,
        "rewrapped": 2,
    }
    assert store.objects() == stored
    new_env = {**store.env, "NIMBUS_ENCRYPTION_KEY_FILE": str(new_key_file)}
    server = ServerProcess(home, env=new_env).start()
    servers.append(server)
    assert f"master key {MasterKey(NEW_KEY).id}, 2 tenant data key(s)" in server.log()
    readable(server.url, server.admin_token, tmp_path / "after")
    readable(server.url, other_token, tmp_path / "after-other")
    server.stop()

    if store.kind != "file":
        return  # the refusals below read the metadata store, not the bucket: checked once
    # The old key, another key, or none at all: the server refuses to start, in one line.
    for wrong in ({"NIMBUS_ENCRYPTION_KEY": b64(KEY)}, {"NIMBUS_ENCRYPTION_KEY": b64(bytes(32))}):
        line = one_error_line(
            nimbus("server", "--port", str(free_port()), env={**home_env, **store.env, **wrong})
        )
        assert f"wrapped under master key {MasterKey(NEW_KEY).id}" in line
        assert "rotate-key" in line
    line = one_error_line(
        nimbus("server", "--port", str(free_port()), env={"NIMBUS_HOME": str(home), **store.env})
    )
    assert "NIMBUS_ENCRYPTION_KEY is not set" in line
    # A malformed key is refused with the way to make a good one.
    line = one_error_line(
        nimbus(
            "server",
            "--port",
            str(free_port()),
            env={"NIMBUS_HOME": str(home), **store.env, "NIMBUS_ENCRYPTION_KEY": "c2hvcnQ="},
        )
    )
    assert "holds 5 bytes, not 32" in line and "openssl rand -base64 32" in line


def test_journey_with_encryption_on_s3(
    seaweedfs: SeaweedFS, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    bucket = seaweedfs.ensure_bucket("encrypted-journeys")
    prefix = f"journey-{os.getpid()}"
    env = {
        **FAST,
        **aws_env(seaweedfs.endpoint),
        "NIMBUS_STORAGE_URL": f"s3://{bucket}/{prefix}",
        "NIMBUS_ENCRYPTION_KEY": b64(KEY),
    }
    server = ServerProcess(tmp_path / "home", env=env).start()
    servers.append(server)
    digits = write_digits_zip(tmp_path / "digits.zip")
    with Client(server.url, server.admin_token, settings=Settings(home=server.home)) as api:
        version = api.upload_dataset("digits", digits.path)
        job = api.submit_job(
            f"digits:{version.version}", "cnn", params={"epochs": 1, "batch_size": 64}
        )
        job = api.wait_job(job.id, timeout=300)
        assert job.state == "succeeded", job
        model = api.register_model("digits", job.id)
        api.create_deployment("digits", f"digits:{model.version}")
        api.wait_deployment("digits", timeout=120)
        prediction = api.predict("digits", data=_a_digit_png())
        assert prediction["label"] in {str(d) for d in range(10)}
        api.delete_deployment("digits")
    client = s3_client(seaweedfs.endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    # dataset files, the code-free job's checkpoint(s) and model files: all sealed
    assert len(listed) >= 5
    for item in listed:
        assert item["Key"].startswith(f"{prefix}/tenants/1/sha256/")
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert body[:5] == b"NMBE\x01", item["Key"]


def _a_digit_png() -> bytes:
    import io

    from PIL import Image

    image = Image.new("L", (8, 8), 0)
    for y in range(1, 7):
        image.putpixel((4, y), 255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_damaged_or_foreign_objects_answer_clear_errors(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """Over HTTP: a sealed object whose key id the keyring does not hold is a 503
    ``encryption_key_mismatch`` naming that key id; a changed ciphertext byte is a 500
    ``corrupt_blob``. JSON errors both, never bytes, never a trace."""
    root = tmp_path / "store"
    env = {"NIMBUS_STORAGE_URL": f"file://{root}", "NIMBUS_ENCRYPTION_KEY": b64(KEY)}
    server = ServerProcess(tmp_path / "home", env=env).start()
    servers.append(server)
    with Client(server.url, server.admin_token, settings=Settings(home=server.home)) as api:
        version = api.upload_dataset("reviews", marker_csv(tmp_path / "reviews.csv"))
    path = root / version.files["source"].key
    original = path.read_bytes()
    url = "/api/v1/datasets/reviews/versions/1/files/source"

    def damaged(offset: int) -> dict[str, str]:
        data = bytearray(original)
        data[offset] ^= 0x01
        os.chmod(path, 0o600)
        path.write_bytes(bytes(data))
        with server.client() as admin:
            response = admin.get(url)
        assert response.headers["content-type"] == "application/json", response.text[:200]
        error: dict[str, str] = response.json()["error"]
        error["status"] = str(response.status_code)
        return error

    foreign_id = bytearray(original[5:13])
    foreign_id[0] ^= 0x01
    error = damaged(5)  # the key id in the header
    assert (error["status"], error["code"]) == ("503", "encryption_key_mismatch")
    assert foreign_id.hex() in error["message"]
    error = damaged(len(original) - 20)  # a byte of the last segment's ciphertext
    assert (error["status"], error["code"]) == ("500", "corrupt_blob")
    assert "failed authentication" in error["message"]
