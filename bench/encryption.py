"""Encryption at rest: what it costs. Prints figures, asserts nothing.

Two measurements, each plain against encrypted in the same run (medians of ``--runs``,
the ratio encrypted / plain):

1. **Blob store**: one ``--size-mb`` MiB file of random bytes stored through
   ``BlobStore.put_file`` into a local directory (hashed, [encrypted into a second file,]
   fsynced, linked into place), then read back whole through ``iter_verified``
   ([decrypted and authenticated segment by segment, then] hash-checked). The store layer
   alone: no HTTP.
2. **Through the server**: the same bytes as a dataset (a tar of the random file next to
   100 IDX images, which the reader prepares; the random member is kept as the source
   blob) uploaded with the SDK to a real ``nimbus server`` on a local store, then
   downloaded; the dataset is deleted after each run so the next upload stores its blobs
   again. One server with ``NIMBUS_ENCRYPTION_KEY`` set, one without, side by side.

Run: .venv/bin/python bench/encryption.py [--runs N] [--size-mb M]   (files under
$BENCH_DIR or the temp dir, removed at the end)
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import ServerProcess, median, spread, wait_quiet
from ingest import chunks, idx_members, random_chunks, write_tar

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.db import tenants
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.services.keyring import open_keyring
from nimbus.storage.blobs import BlobStore
from nimbus.storage.encrypted import EncryptedObjectStore
from nimbus.storage.local import LocalObjectStore

MIB = 2**20
KEY = base64.b64encode(os.urandom(32)).decode()


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def store_level(work: Path, source: Path, runs: int) -> dict[str, list[float]]:
    db = Database(f"sqlite:///{work / 'keys.db'}")
    upgrade(db.engine)
    with db.session(write=True) as session:
        tenant = tenants.get_or_create(session, "bench").id
    plain = BlobStore(LocalObjectStore(work / "plain"), work / "staging")
    sealed = BlobStore(
        EncryptedObjectStore(
            LocalObjectStore(work / "sealed"), open_keyring(db, base64.b64decode(KEY)), work / "s"
        ),
        work / "staging",
        tenant_scoped=True,
    ).for_tenant(tenant)
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, blobs in (("plain", plain), ("encrypted", sealed)):
            ref = None

            def put(blobs: BlobStore = blobs) -> None:
                nonlocal ref
                ref = blobs.put_file(source)

            times.setdefault(f"{name} put", []).append(timed(put))
            assert ref is not None
            key = ref.key

            def read(blobs: BlobStore = blobs, key: str = key) -> None:
                for _ in blobs.iter_verified(key):
                    pass

            times.setdefault(f"{name} read", []).append(timed(read))
            blobs.delete(key)
    db.dispose()
    return times


def server_level(work: Path, dataset: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    servers = {
        "plain": ServerProcess(work / "home-plain"),
        "encrypted": ServerProcess(work / "home-sealed", env={"NIMBUS_ENCRYPTION_KEY": KEY}),
    }
    try:
        for server in servers.values():
            server.start()
            assert server.proc is not None
            wait_quiet(server.proc.pid)
        for run in range(runs):
            for name, server in servers.items():
                with Client(
                    server.url, server.admin_token, settings=Settings(home=server.home)
                ) as api:
                    dataset_name = f"big-{run}"
                    times.setdefault(f"{name} upload", []).append(
                        timed(lambda: api.upload_dataset(dataset_name, dataset))  # noqa: B023
                    )
                    out = work / f"down-{name}-{run}"
                    times.setdefault(f"{name} download", []).append(
                        timed(lambda: api.download_dataset(dataset_name, out))  # noqa: B023
                    )
                    shutil.rmtree(out)
                    api.delete_dataset(dataset_name)
    finally:
        for server in servers.values():
            server.stop()
    return times


def report(title: str, times: dict[str, list[float]], size: int) -> None:
    print(title)
    for op in sorted({key.split(" ", 1)[1] for key in times}):
        plain, sealed = times[f"plain {op}"], times[f"encrypted {op}"]
        print(
            f"  {op:9s} plain {size / MIB / median(plain):7.0f} MiB/s "
            f"({spread(plain)})   encrypted {size / MIB / median(sealed):7.0f} MiB/s "
            f"({spread(sealed)})   time ratio encrypted/plain {median(sealed) / median(plain):.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=256, help="MiB of the file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-enc-", dir=os.environ.get("BENCH_DIR")))
    try:
        size = args.size_mb * MIB
        rng = np.random.default_rng(7)
        source = work / "random.bin"
        with source.open("wb") as out:
            for chunk in random_chunks(rng, size):
                out.write(chunk)
        print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        report(
            f"blob store, local directory, {args.size_mb} MiB, {args.runs} runs (median):",
            store_level(work, source, args.runs),
            size,
        )
        dataset = work / "big.tar"
        write_tar(
            dataset, [("README.bin", size, chunks(source, size, None)), *idx_members(rng, 100)]
        )
        report(
            f"through nimbus server (SDK upload / download of a {args.size_mb} MiB dataset), "
            f"{args.runs} runs (median):",
            server_level(work, dataset, args.runs),
            dataset.stat().st_size,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
