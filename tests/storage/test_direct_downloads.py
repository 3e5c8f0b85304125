"""The SDK's direct download (nimbus.client.direct.fetch_direct) against SeaweedFS with
real faults on the way: connections cut mid-body and 503 answers (a TCP proxy in front of
the server, which the presigned URL is signed for), and a URL that really expired. A failed
range is fetched again; the file appears only once its hash matched, and never otherwise."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nimbus.client.direct import fetch_direct
from nimbus.errors import CorruptBlob, StorageUnavailable
from nimbus.ranged_get import Link
from nimbus.ranges import WRITE_SIZE
from nimbus.storage import ranged
from nimbus.storage.s3_direct import S3Direct
from nimbus.system import free_port
from tests.helpers_s3 import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS, s3_client

MIB = 1024 * 1024
BUCKET = "nimbus-downloads"


class FaultyProxy:
    """Forwards TCP connections to ``target``; each new connection takes the next fault
    of ``faults`` ("cut": the response is cut after 64 KiB; "503": answered 503 without
    reaching the server), then connections pass untouched."""

    def __init__(self, target: tuple[str, int], faults: list[str]) -> None:
        self.target, self.faults = target, list(faults)
        self.port = free_port()
        self.injected: list[str] = []
        self.accepted = 0  # connections made through it
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                fault = self.faults.pop(0) if self.faults else "pass"
                if fault != "pass":
                    self.injected.append(fault)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str) -> None:
        with client:
            if fault == "503":
                client.recv(65536)
                client.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n"
                    b"Connection: close\r\n\r\nSlow down"
                )
                return
            with socket.create_connection(self.target) as server:
                threading.Thread(target=_pump, args=(client, server, None), daemon=True).start()
                _pump(server, client, 64 * 1024 if fault == "cut" else None)


def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
    sent = 0
    try:
        while data := source.recv(65536):
            if limit is not None and sent + len(data) > limit:
                sink.sendall(data[: limit - sent])
                break
            sink.sendall(data)
            sent += len(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def stored(seaweedfs: SeaweedFS) -> tuple[str, bytes, dict[str, Any]]:
    """A 3 MiB object in the bucket, and the file metadata a version would hold for it."""
    seaweedfs.ensure_bucket(BUCKET)
    data = os.urandom(3 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    key = f"sha256/{digest[:2]}/{digest}"
    s3_client(seaweedfs.endpoint).put_object(Bucket=BUCKET, Key=key, Body=data)
    return key, data, {"key": key, "size": len(data)}


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultyProxy]:
    host, port = seaweedfs.endpoint.removeprefix("http://").rsplit(":", 1)
    proxy = FaultyProxy((host, int(port)), [])
    try:
        yield proxy
    finally:
        proxy.close()


def presigned(endpoint: str, key: str, seconds: int = 60) -> str:
    return str(
        s3_client(endpoint).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=seconds
        )
    )


def test_cut_and_refused_ranges_are_fetched_again_then_checked(
    stored: tuple[str, bytes, dict[str, Any]], proxy: FaultyProxy, tmp_path: Path
) -> None:
    key, data, meta = stored
    proxy.faults = ["cut", "503", "cut"]
    out = tmp_path / "file.bin"
    progress: list[int] = []
    done = fetch_direct(
        Link(presigned(proxy.endpoint, key)),
        out,
        meta,
        0,
        len(data),
        lambda got, total: progress.append(got),
        workers=2,
        range_size=MIB,
        sleep=lambda seconds: None,
    )
    assert done == len(data) and out.read_bytes() == data
    assert sorted(proxy.injected) == ["503", "cut", "cut"]  # every fault really happened
    assert progress[-1] == len(data)  # bytes of a cut range were taken back, then counted
    assert not list(tmp_path.glob(".*.part"))


def test_a_download_writes_its_file_in_pieces_of_at_most_write_size(
    stored: tuple[str, bytes, dict[str, Any]],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each write(2) of a download is at most nimbus.ranges.WRITE_SIZE: larger writes get
    page-cache folios as large, which a VM's free page reporting made many times slower."""
    key, data, meta = stored
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, buffer: Any, offset: int) -> int:
        sizes.append(len(buffer))
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "file.bin"
    fetch_direct(Link(presigned(seaweedfs.endpoint, key)), out, meta, 0, len(data), None)
    assert out.read_bytes() == data
    assert sum(sizes) == len(data) and max(sizes) <= WRITE_SIZE


def test_ranges_reuse_their_thread_s_connection_and_a_cut_one_is_replaced(
    stored: tuple[str, bytes, dict[str, Any]], proxy: FaultyProxy, tmp_path: Path
) -> None:
    """Each worker keeps one connection alive across its ranges; a connection cut mid-body
    is closed, never used again, and the range comes again on a new one."""
    key, data, meta = stored
    link = Link(presigned(proxy.endpoint, key))
    out = tmp_path / "file.bin"
    fetch_direct(link, out, meta, 0, len(data), None, workers=1, range_size=MIB // 2)
    assert out.read_bytes() == data and proxy.accepted == 1  # six ranges, one connection

    proxy.accepted, proxy.faults = 0, ["cut"]
    again = tmp_path / "again.bin"
    fetch_direct(
        link, again, meta, 0, len(data), None, workers=1, range_size=MIB // 2, sleep=lambda s: None
    )
    assert again.read_bytes() == data
    assert proxy.injected == ["cut"] and proxy.accepted == 2


def test_a_range_that_keeps_failing_leaves_no_file(
    stored: tuple[str, bytes, dict[str, Any]], proxy: FaultyProxy, tmp_path: Path
) -> None:
    key, data, meta = stored
    proxy.faults = ["503"] * 4
    out = tmp_path / "file.bin"
    with pytest.raises(StorageUnavailable, match="failed 4 times"):
        fetch_direct(
            Link(presigned(proxy.endpoint, key)),
            out,
            meta,
            0,
            len(data),
            None,
            range_size=4 * MIB,  # one range: fetched on the calling thread
            sleep=lambda seconds: None,
        )
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


def test_an_expired_url_is_renewed_once_and_a_wrong_hash_leaves_no_file(
    stored: tuple[str, bytes, dict[str, Any]], seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    key, data, meta = stored
    expired = presigned(seaweedfs.endpoint, key, seconds=1)
    time.sleep(2.1)  # a real expiry: the storage service refuses it (403)
    renewed: list[str] = []

    def renew() -> str:
        renewed.append(key)
        return presigned(seaweedfs.endpoint, key)

    out = tmp_path / "file.bin"
    fetch_direct(Link(expired, renew), out, meta, 0, len(data), None, range_size=MIB)
    assert out.read_bytes() == data
    assert renewed == [key]  # three ranges found it stale; the server was asked once

    wrong = {**meta, "key": f"sha256/00/{'0' * 64}"}
    bad = tmp_path / "bad.bin"
    with pytest.raises(CorruptBlob):
        fetch_direct(Link(presigned(seaweedfs.endpoint, key)), bad, wrong, 0, len(data), None)
    assert not bad.exists() and not list(tmp_path.glob(".*.part"))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (both PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class TlsProxy(FaultyProxy):
    """Ends TLS with ``cert`` and forwards the plain bytes to ``target`` (as a storage
    service's HTTPS front would); no faults."""

    def __init__(self, target: tuple[str, int], cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.handshakes = 0  # that completed
        super().__init__(target, [])

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self, client: socket.socket, fault: str) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused our certificate
            client.close()
            return
        self.handshakes += 1
        with tls, socket.create_connection(self.target) as server:
            threading.Thread(target=_pump, args=(tls, server, None), daemon=True).start()
            _pump(server, tls, None)


def test_https_ranges_verify_the_service_certificate(
    stored: tuple[str, bytes, dict[str, Any]],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over HTTPS, the ranges are fetched through TLS and the service's certificate is
    checked against the machine's trust store (``SSL_CERT_FILE`` here): a service whose
    certificate is not trusted (a man in the middle) gets no request, and no file is left."""
    key, data, meta = stored
    cert, private = self_signed(tmp_path)
    host, port = seaweedfs.endpoint.removeprefix("http://").rsplit(":", 1)
    proxy = TlsProxy((host, int(port)), cert, private)
    try:
        link = Link(presigned(proxy.endpoint, key))
        untrusted = tmp_path / "untrusted.bin"
        with pytest.raises(StorageUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_direct(
                link, untrusted, meta, 0, len(data), None, range_size=MIB, sleep=lambda s: None
            )
        assert proxy.handshakes == 0 and not untrusted.exists()
        assert not list(tmp_path.glob(".*.part"))

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now the machine trusts it
        out = tmp_path / "file.bin"
        done = fetch_direct(link, out, meta, 0, len(data), None, workers=2, range_size=MIB)
        assert done == len(data) and out.read_bytes() == data and proxy.handshakes >= 1
    finally:
        proxy.close()


def test_the_control_plane_s_read_back_trusts_what_boto3_trusts(
    stored: tuple[str, bytes, dict[str, Any]],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An S3 service on a private CA named by AWS_CA_BUNDLE (as boto3 reads it), the
    machine's trust store without it: the read-back's own ranged GETs check the service's
    certificate against that bundle too (before, boto3's HEAD passed and every ranged GET
    failed CERTIFICATE_VERIFY_FAILED). The bundle is parsed once for the read-back's
    several connections, not once per connection."""
    key, data, _ = stored
    cert, private = self_signed(tmp_path)
    monkeypatch.setattr(ranged, "RANGE", MIB // 2)  # 6 ranges, up to 6 connections
    contexts: list[str | None] = []
    create = ssl.create_default_context

    def counted(*args: Any, cafile: str | None = None, **kwargs: Any) -> ssl.SSLContext:
        contexts.append(cafile)
        return create(*args, cafile=cafile, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    host, port = seaweedfs.endpoint.removeprefix("http://").rsplit(":", 1)
    proxy = TlsProxy((host, int(port)), cert, private)
    config = {
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "region": REGION,
        "endpoint": proxy.endpoint,
    }
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        out = tmp_path / "read-back.bin"
        digest = S3Direct(BUCKET, "", config=config).download(key, out)
        assert digest == key.rpartition("/")[2] and out.read_bytes() == data
        assert proxy.handshakes >= 3  # boto3's HEAD and the ranged GETs alike
        assert contexts.count(str(cert)) == 1
    finally:
        proxy.close()
